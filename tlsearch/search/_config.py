"""What a search was asked to do: `SearchConfig`, saved in the study folder, and the
one error a search raises."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from tlsearch.options import ENGINES
from tlsearch.paths import default_cache_dir

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"
SPACE_FILE = "space.json"
JOURNAL_FILE = "journal.log"


class SearchError(RuntimeError):
    """A search cannot start or continue; the message is one line saying why."""


@dataclass(frozen=True)
class SearchConfig:
    """Everything `tlsearch search` was asked to do; saved with the study."""

    data_dir: str
    space: str = "quick"
    overrides: tuple[str, ...] = ()
    study: str = "tlsearch"
    out: str = "studies"
    storage: str | None = None
    trials: int = 20
    timeout: float | None = None
    metric: str | None = None
    weights: str = "imagenet"
    seed: int = 0
    cache_dir: str | None = None
    pruner: str = "hyperband"
    val_fraction: float = 0.2
    #: Held-out test share; None: `AUTO_TEST_FRACTION` when every class has at least
    #: `MIN_CLASS_FOR_TEST` images (a pre-split test/ folder is always honoured).
    test_fraction: float | None = 0.0
    force: bool = False
    stale_after: float = 600.0
    rank: bool = True
    #: Which of tlsearch.rank.RANKERS orders the backbones: the linear probe, which
    #: predicted the search's outcomes best on 3 datasets (benchmarks/RESULTS-logme.md).
    ranker: str = "probe"
    keep_top_backbones: int | None = None
    baselines: bool = True
    max_latency_ms: float | None = None
    max_params: int | None = None
    engine: str = ENGINES[0]  # one of ENGINES
    kt_oracle: str = "hyperband"  # KerasTuner's oracle: hyperband or bayesian
    #: A supervised worker whose resident memory passes this many MB after a trial is
    #: replaced by a fresh one (None: never).
    worker_memory_mb: float | None = None
    #: Earlier studies (or priors files) whose best strategies are enqueued first
    #: (`tlsearch.priors`).
    priors: tuple[str, ...] = ()
    #: How the recommendation is chosen (`tlsearch.recommend.RULES`): "best", the top
    #: validation score, or "1se", the simplest trial within one standard error of it
    #: (on 12 benchmark runs "1se" scored higher on test once, by 0.2 points, and lost
    #: 1.1 points on average: benchmarks/RESULTS-transfer*.md).
    select: str = "best"
    #: Recommend the chosen trial averaged with the linear probe on its own backbone and
    #: size (`tlsearch.recommend.floor_partner`) when it fine-tunes: the probabilities'
    #: mean holds scikit-learn's probe as a floor on test where the trial alone did not
    #: (benchmarks/RESULTS-transfer*.md).
    blend_floor: bool = True
    #: Bound on the frozen-prefix cache's data in GiB (least recently used entries are
    #: evicted past it); None: unbounded.
    cache_max_gb: float | None = None

    @property
    def study_dir(self) -> Path:
        return Path(self.out) / self.study

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["overrides"] = list(self.overrides)
        data["priors"] = list(self.priors)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["overrides"] = tuple(values.get("overrides", ()))
        values["priors"] = tuple(values.get("priors", ()))
        return cls(**values)

def load_config(study_dir: Path) -> SearchConfig:
    """The saved config of the study in `study_dir`, whose `out` is that folder's parent:
    a study moved or copied elsewhere (or addressed from another working directory)
    opens where it is, not where it was created."""
    path = Path(study_dir) / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SearchError(f"no study at {study_dir} ({CONFIG_FILE} unreadable: {exc})") from None
    return replace(SearchConfig.from_dict(data), out=str(Path(study_dir).parent))

def meets_constraints(config: SearchConfig, latency_ms: float | None,
                      params_total: int | None) -> bool:
    """Whether a trial may be recommended under --max-latency-ms / --max-params."""
    if config.max_latency_ms is not None and (latency_ms is None
                                              or latency_ms > config.max_latency_ms):
        return False
    if config.max_params is not None and (params_total is None
                                          or params_total > config.max_params):
        return False
    return True
