"""The search: an Optuna study over transfer strategies, resumable by re-running.

A study lives in a folder (`studies/<name>/`) that holds the embedded storage (an
Optuna journal file, safe for several local processes), the saved split, the space
used, the run configuration and one folder per trial (checkpoint, result).
Re-running the same command continues the study: completed trials are kept, a trial
left RUNNING by a killed process is marked failed and retried from its last epoch
checkpoint, and a changed dataset or space is refused unless forced.

The modules behind this surface, one concept each (as in Optuna, private):
`_config` (what was asked), `_storage` (where the study lives, its sampler, pruner
and admission lock), `_recovery` (heartbeats, dead and crashed trials, retries),
`_prepare` (split, weights, ranking, enqueued baselines, priors and floor),
`_recorder` (how a trial's end is recorded, for both engines), `_optuna` and
`_tuner` (the two engines), `_workers` (supervised processes), `_run` (which of
them a configuration asks for) and `_summary`.
"""

from tlsearch.search._config import (
    ENGINES,
    SPLIT_FILE,
    SearchConfig,
    SearchError,
    default_cache_dir,
    load_config,
    meets_constraints,
)
from tlsearch.search._optuna import pruning_offset, run_search
from tlsearch.search._prepare import (
    held_out_fraction,
    prepare_search,
    prepare_split,
    rank_data,
    study_split,
)
from tlsearch.search._recorder import DISK_ERRNOS, MODEL_FILE
from tlsearch.search._recovery import fail_crashed_trials
from tlsearch.search._run import run
from tlsearch.search._storage import (
    PRUNERS,
    StudyHandle,
    hide_password,
    make_storage,
    open_study,
    storage_url_with_driver,
)
from tlsearch.search._summary import SearchOutcome, study_summary
from tlsearch.search._tuner import ORACLE_PRUNER, ORACLES, run_keras_tuner
from tlsearch.search._workers import run_workers, signal_name, threads_per_worker

__all__ = [
    "DISK_ERRNOS",
    "ENGINES",
    "MODEL_FILE",
    "ORACLES",
    "ORACLE_PRUNER",
    "PRUNERS",
    "SPLIT_FILE",
    "SearchConfig",
    "SearchError",
    "SearchOutcome",
    "StudyHandle",
    "default_cache_dir",
    "fail_crashed_trials",
    "held_out_fraction",
    "hide_password",
    "load_config",
    "make_storage",
    "meets_constraints",
    "open_study",
    "prepare_search",
    "prepare_split",
    "rank_data",
    "pruning_offset",
    "run",
    "run_keras_tuner",
    "run_search",
    "run_workers",
    "signal_name",
    "storage_url_with_driver",
    "study_split",
    "study_summary",
    "threads_per_worker",
]
