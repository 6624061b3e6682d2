"""The search: an Optuna study over transfer strategies, resumable by re-running.

A study lives in a folder (`studies/<name>/`) that holds the embedded storage (an
Optuna journal file, safe for several local processes), the saved split, the space
used, the run configuration and one folder per trial (checkpoint, result).
Re-running the same command continues the study: completed trials are kept, a trial
left RUNNING by a killed process is marked failed and retried from its last epoch
checkpoint, and a changed dataset or space is refused unless forced.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import threading
import time
import zlib
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tlsearch import kept

__all__ = [
    "PRUNERS",
    "SearchConfig",
    "SearchError",
    "SearchOutcome",
    "StudyHandle",
    "default_cache_dir",
    "fail_crashed_trials",
    "load_config",
    "open_study",
    "prepare_search",
    "prepare_split",
    "run_search",
    "study_summary",
]

PRUNERS = ("hyperband", "median", "sha", "none")
CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"
SPACE_FILE = "space.json"
JOURNAL_FILE = "journal.log"
#: Consecutive failed trials after which a search stops instead of looping.
MAX_CONSECUTIVE_FAILURES = 5


class SearchError(RuntimeError):
    """A search cannot start or continue; the message is one line saying why."""


def default_cache_dir() -> Path:
    base = os.environ.get("TLSEARCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tlsearch")
    return Path(base)


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
    engine: str = "optuna"  # or "keras-tuner"
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
    path = Path(study_dir) / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SearchError(f"no study at {study_dir} ({CONFIG_FILE} unreadable: {exc})") from None
    return SearchConfig.from_dict(data)


# -- storage ---------------------------------------------------------------------------


def make_storage(url: str | None, study_dir: Path):
    """Optuna storage for a URL, or the embedded journal file in the study folder."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if url is None or url.endswith((".log", ".journal")) and "://" not in url:
        path = study_dir / JOURNAL_FILE if url is None else Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_journal(path)
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except (KeyError, ValueError, AttributeError) as exc:
            raise SearchError(
                f"the study storage {path} is damaged ({type(exc).__name__}: {exc}); restore "
                "it from a backup, or start a new --study (trial folders are untouched)"
            ) from None
    scheme = url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""
    if scheme not in ("sqlite", "postgresql", "mysql"):
        raise SearchError(f"unknown storage {url!r}: use a path ending in .log, sqlite:///FILE, "
                          "postgresql://... or mysql://...")
    url = storage_url_with_driver(url)
    try:
        # Liveness is our own heartbeat (see `_Heartbeat`), the same for every storage.
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # SQLAlchemy raises many types; the user needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SearchError(f"cannot open storage {hide_password(url)}: {first}") from None


#: Database scheme -> (SQLAlchemy driver name, module it imports), in order of preference;
#: the extras install the last one of each (`tlsearch[postgres]`, `tlsearch[mysql]`).
DB_DRIVERS = {
    "postgresql": (("psycopg", "psycopg"), ("psycopg2", "psycopg2")),
    "mysql": (("mysqldb", "MySQLdb"), ("pymysql", "pymysql")),
}


def storage_url_with_driver(url: str) -> str:
    """`postgresql://...` / `mysql://...` with an installed driver named explicitly.

    SQLAlchemy maps a bare scheme to one fixed driver (psycopg 3 for PostgreSQL since
    2.1, mysqlclient for MySQL), which need not be the one installed; a URL that names
    its driver (`postgresql+psycopg2://`) is left as it is.
    """
    import importlib.util

    scheme, rest = url.split("://", 1)
    if "+" in scheme or scheme not in DB_DRIVERS:
        return url
    for driver, module in DB_DRIVERS[scheme]:
        if importlib.util.find_spec(module) is not None:
            return f"{scheme}+{driver}://{rest}"
    extra = "postgres" if scheme == "postgresql" else "mysql"
    raise SearchError(f"{scheme}:// storage needs a database driver: pip install "
                      f"'tlsearch[{extra}]' (or name one: {scheme}+DRIVER://...)")


def hide_password(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show it without its user part
        head, _, tail = url.partition("://")
        return f"{head}://{tail.rsplit('@', 1)[-1]}"


def repair_torn_journal(path: Path) -> int:
    """Cut a half-written last record off the journal; returns the bytes removed.

    A process killed in the middle of an append leaves a line without its newline.
    Optuna skips it when reading, but the next append would be glued to it and corrupt
    the journal for good. The fragment was never committed (its write did not finish),
    so removing it loses nothing; it is kept beside the journal for inspection.
    """
    from optuna.storages.journal import JournalFileSymlinkLock

    try:
        if path.stat().st_size == 0:
            return 0
    except FileNotFoundError:
        return 0
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()  # the lock writers hold: no append is in flight while we look
    try:
        with open(path, "rb+") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 1))
            if fh.read(1) == b"\n":
                return 0
            # Find the last complete line, reading backwards in blocks.
            end, keep = size, 0
            while end > 0:
                start = max(0, end - 65536)
                fh.seek(start)
                block = fh.read(end - start)
                cut = block.rfind(b"\n")
                if cut >= 0:
                    keep = start + cut + 1
                    break
                end = start
            fh.seek(keep)
            tail = fh.read()
            try:  # the record is whole and only its newline is missing: keep it
                json.loads(tail)
                fh.seek(size)
                fh.write(b"\n")
                fh.flush()
                os.fsync(fh.fileno())
                return 0
            except ValueError:
                pass
            (path.parent / f"{path.name}.torn-{int(time.time())}").write_bytes(tail)
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
            return size - keep
    finally:
        lock.release()


def _make_pruner(name: str, max_resource: int):
    import optuna

    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(max_resource, 1),
                                              reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise SearchError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")


def _make_sampler(seed: int):
    import numpy as np
    import optuna

    class TrialSeededTPE(optuna.samplers.TPESampler):
        """TPE whose random draws for a trial are seeded by (--seed, trial number).

        Seeded once per process, every worker (and every machine sharing `--seed`)
        would draw the same start-up points; seeded per trial, the draws differ
        between trials wherever they run and a one-worker study is reproducible.
        """

        def before_trial(self, study, trial) -> None:
            state = np.random.SeedSequence([seed, trial.number]).generate_state(2)
            # TPESampler keeps its own and its start-up RandomSampler's generators.
            self._rng.rng.seed(int(state[0]))
            self._random_sampler._rng.rng.seed(int(state[1]))
            super().before_trial(study, trial)

    # constant_liar keeps parallel workers from sampling the same point; group handles
    # the conditional space (no backbone LR when nothing is unfrozen).
    return TrialSeededTPE(seed=seed, multivariate=True, group=True, constant_liar=True,
                          n_startup_trials=5)


# -- study handle ------------------------------------------------------------------------


@dataclass
class StudyHandle:
    config: SearchConfig
    study: Any
    space: Any
    storage: Any = None

    @property
    def dir(self) -> Path:
        return self.config.study_dir

    def trial_dir(self, number: int) -> Path:
        return self.dir / "trials" / f"{number:04d}"


def open_study(config: SearchConfig, *, create: bool = True) -> StudyHandle:
    """Create or load the study; refuses a changed space unless `config.force`."""
    import optuna

    from tlsearch.backbones import iter_names
    from tlsearch.space import load_space

    space = load_space(config.space, overrides=config.overrides,
                       known_backbones=set(iter_names(include_test=True)))
    study_dir = config.study_dir
    study_dir.mkdir(parents=True, exist_ok=True)
    storage = make_storage(config.storage, study_dir)
    metric = config.metric or space.objective
    try:
        study = optuna.load_study(study_name=config.study, storage=storage,
                                  sampler=_make_sampler(config.seed),
                                  pruner=_make_pruner(config.pruner, _max_pruning_steps(space)))
        saved = study.user_attrs.get("space_fingerprint")
        if saved and saved != space.fingerprint() and not config.force:
            raise SearchError(
                f"study {config.study!r} was created with a different search space; "
                "re-run with the same --space/--set, use a new --study, or pass --force")
    except KeyError:
        if (study_dir / "trials").is_dir() and any((study_dir / "trials").iterdir()):
            # Trial folders but no study in the storage: the storage lost it. Creating a
            # new study here would overwrite those trials' folders.
            raise SearchError(
                f"the study storage in {study_dir} is damaged: it no longer holds study "
                f"{config.study!r}, whose trial folders are still there; restore it from a "
                "backup, or start a new --study") from None
        if not create:
            raise SearchError(f"no study named {config.study!r} in {study_dir}") from None
        study = optuna.create_study(study_name=config.study, storage=storage,
                                    direction="maximize", sampler=_make_sampler(config.seed),
                                    pruner=_make_pruner(config.pruner, _max_pruning_steps(space)))
        study.set_user_attr("space_fingerprint", space.fingerprint())
        study.set_user_attr("metric", metric)
        study.set_user_attr("tlsearch_version", __import__("tlsearch").__version__)
    config_path = study_dir / CONFIG_FILE
    # --force is for the run that passed it: saved, a later `resume` would silently
    # accept a changed dataset or space.
    _write_json(config_path, dict(config.to_dict(), metric=metric, force=False))
    _write_json(study_dir / SPACE_FILE, space.to_dict())
    return StudyHandle(config=config, study=study, space=space, storage=storage)


def _space_high(space: Any, name: str, default: int) -> int:
    """The largest value an integer parameter of the space can take."""
    from tlsearch.space import Range

    param = space.params.get(name)
    if param is None:
        return default
    if isinstance(param, Range):
        return int(param.high)
    values = getattr(param, "choices", None) or (param.value,)
    return int(max(values))


def _max_steps(space: Any) -> int:
    return _space_high(space, "head_epochs", 3) + _space_high(space, "finetune_epochs", 3)


def _max_pruning_steps(space: Any) -> int:
    """The most steps a trial reports to the pruner (`pruning_offset`): a head-only
    trial's epochs or a fine-tuning trial's fine-tuning epochs."""
    return max(_space_high(space, "head_epochs", 3), _space_high(space, "finetune_epochs", 3))


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


# -- recovery ------------------------------------------------------------------------------


def _process_start(pid: int) -> int | None:
    """When the process started (clock ticks since boot, Linux), to tell a reused PID."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _pid_alive(pid: int, started: int | None = None) -> bool:
    """Whether the worker process `pid` (started at `started`, if known) still runs."""
    if pid == os.getpid():
        # This process is between trials whenever it checks: a RUNNING trial that names
        # it was left behind by an earlier, aborted search loop in this same process.
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child that its parent has not reaped yet is a zombie: dead
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        return True
    # The PID was reused by a newer process (after a reboot, say): the worker is gone.
    return started is None or _process_start(pid) in (None, started)


def recover_stale_trials(handle: StudyHandle, *, stale_after: float) -> list[int]:
    """Fail RUNNING trials whose worker is gone and enqueue a retry from their checkpoint.

    A worker is gone when it ran on this host and its process no longer exists, or
    when its heartbeat file (touched every epoch) is older than `stale_after` seconds.
    Returns the numbers of the recovered trials.
    """
    import optuna
    from optuna.trial import TrialState

    study = handle.study
    host = socket.gethostname()
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        # The freshest sign of life: the heartbeat in the storage (seen from every
        # machine), the local heartbeat file, or the trial's start.
        beats = [float(trial.user_attrs.get("heartbeat") or 0.0)]
        if trial.datetime_start:
            beats.append(trial.datetime_start.timestamp())
        try:
            beats.append((handle.trial_dir(trial.number) / "heartbeat").stat().st_mtime)
        except OSError:
            pass
        age = time.time() - max(beats)
        same_host_dead = worker.get("host") == host and not _pid_alive(
            int(worker.get("pid", 0)), worker.get("started"))
        if not (same_host_dead or age > stale_after):
            continue
        supervisor = worker.get("supervisor") or {}
        if (same_host_dead and age <= stale_after and supervisor.get("pid") != os.getpid()
                and _pid_alive(int(supervisor.get("pid", 0)), supervisor.get("started"))):
            continue  # its supervisor records how it died (crashed:SIGSEGV) and retries it
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "failure_reason", "worker_died")
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker recovered it first
        _enqueue_retry(handle, trial)
        recovered.append(trial.number)
    return recovered


def _enqueue_retry(handle: StudyHandle, trial: Any, **extra: Any) -> None:
    # The checkpoint is only here when the dead worker ran on this machine or the study
    # folder is shared; otherwise the retry starts from scratch, and says so.
    ckpt = handle.trial_dir(trial.number) / "checkpoint"
    has_ckpt = (ckpt / "latest.json").exists()
    attrs = {
        "retry_of": trial.number,
        "strategy": trial.user_attrs.get("strategy"),
        "resume_from": str(ckpt) if has_ckpt else None,
        "retry_mode": "checkpoint" if has_ckpt else "scratch",
        "baseline": trial.user_attrs.get("baseline"),
        **extra,
    }
    handle.study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)


def fail_crashed_trials(handle: StudyHandle, pid: int, signal_name: str) -> list[dict[str, Any]]:
    """Fail the RUNNING trials of a worker process that died natively, and retry each once.

    The reason names the signal (`crashed:SIGSEGV`). A trial that is itself the retry
    of a crash stays failed, so one strategy that always crashes costs two attempts
    and the sampler moves on. Returns one record per trial: number, reason, retried.
    """
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    reason = f"crashed:{signal_name}"
    records = []
    for trial in handle.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host") != host or int(worker.get("pid", 0)) != pid:
            continue
        storage = handle.study._storage
        try:
            storage.set_trial_user_attr(trial._trial_id, "failure_reason", reason)
            storage.set_trial_user_attr(trial._trial_id, "crash_signal", signal_name)
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # already recovered by someone else
        retried = trial.user_attrs.get("crash_retry_of") is None
        if retried:
            _enqueue_retry(handle, trial, crash_retry_of=trial.number)
        records.append({"number": trial.number, "reason": reason, "retried": retried})
    return records


# -- the search loop ---------------------------------------------------------------------


@dataclass
class SearchOutcome:
    best: dict[str, Any] | None
    counts: dict[str, int]
    stopped: str  # "done" | "timeout" | "interrupted" | "all_failed"
    recovered: list[int] = field(default_factory=list)
    study_dir: Path | None = None
    crashed: list[dict[str, Any]] = field(default_factory=list)  # see fail_crashed_trials
    selection: dict[str, Any] | None = None  # tlsearch.recommend.Selection.to_dict()


class _Heartbeat:
    """Proof of life for a running trial, beaten from a thread so that a long epoch or
    a long prefix pass is not mistaken for a dead worker: touches the trial's local
    file and writes the time into the storage, where workers on other machines see it."""

    def __init__(self, trial: Any, path: Path, interval: float) -> None:
        self.trial, self.path, self.interval = trial, path, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tlsearch-heartbeat",
                                        daemon=True)

    def beat(self) -> None:
        self.path.touch()
        try:
            self.trial.set_user_attr("heartbeat", time.time())
        except Exception:  # a finished trial or a storage hiccup: the next beat retries
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def __enter__(self) -> _Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def pruning_offset(strategy: Any) -> int:
    """Epochs of a trial the pruner does not see: a fine-tuning strategy's head warm-up.

    The pruner judges what a strategy is. Its warm-up epochs train the same head on the
    same frozen features as every head-only trial, so judged there (Hyperband's first
    rungs fall inside a 5-epoch warm-up) unfreeze depth, BatchNorm mode and backbone
    learning rate would never decide who survives. A fine-tuning trial therefore reports
    its fine-tuning epochs as pruning steps 1, 2, ...; a head-only trial its epochs.
    """
    return strategy.head_epochs if strategy.fine_tunes else 0


class _OptunaReporter:
    def __init__(self, trial: Any, on_epoch: Callable[[dict], None] | None,
                 prunable: bool = True, crash_with: str | None = None, offset: int = 0):
        self.trial, self.on_epoch, self.prunable = trial, on_epoch, prunable
        self.crash_with, self.offset = crash_with, offset
        self.reported = False

    def report(self, value: float, step: int) -> None:
        if self.crash_with:  # test hook: die natively mid-trial, after a checkpoint
            _crash(self.crash_with)
        if step > self.offset:  # see `pruning_offset`
            self.trial.report(value, step - self.offset)
            self.reported = True
        if self.on_epoch:
            self.on_epoch({"trial": self.trial.number, "step": step, "value": value})

    def should_stop(self) -> bool:
        # Baselines are the yardstick: they run their whole recipe.
        return self.prunable and self.reported and self.trial.should_prune()


def _crash(how: str) -> None:
    import signal

    if how.startswith("SIGABRT"):
        os.abort()
    os.kill(os.getpid(), getattr(signal, how.split(":")[0]))


def _crash_hook(crash_trials: dict[int, str] | None, number: int,
                attrs: dict[str, Any]) -> str | None:
    """The signal a test asked this trial to die of: `{n: "SIGSEGV"}` crashes trial n;
    `"SIGSEGV:always"` crashes its crash retry too."""
    if not crash_trials:
        return None
    if number in crash_trials:
        return crash_trials[number]
    first = crash_trials.get(attrs.get("crash_retry_of"))
    return first if first and first.endswith(":always") else None


def _resident_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


@contextmanager
def _admission(handle: StudyHandle) -> Iterator[None]:
    """Serialise "is there room for one more trial? then ask" across workers.

    Without it two workers can both see room for the last trial and both start one.
    Local workers share a file lock in the study folder; workers on other machines
    share the database's own advisory lock (PostgreSQL, MySQL).
    """
    with open(handle.dir / ".admission.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            engine = getattr(handle.storage, "engine", None)
            dialect = engine.dialect.name if engine is not None else ""
            if dialect not in ("postgresql", "mysql"):
                yield
                return
            from sqlalchemy import text

            key = zlib.crc32(f"tlsearch:{handle.config.study}".encode()) & 0x7FFFFFFF
            if dialect == "postgresql":
                lock, unlock = "SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)"
                params: dict[str, Any] = {"k": key}
            else:
                lock, unlock = "SELECT GET_LOCK(:k, 600)", "SELECT RELEASE_LOCK(:k)"
                params = {"k": f"tlsearch-{key}"}
            with engine.connect() as conn:
                conn.execute(text(lock), params)
                try:
                    yield
                finally:
                    conn.execute(text(unlock), params)
                    conn.commit()
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _finished_count(study: Any, *, with_running: bool = False) -> int:
    """Trials that count towards `--trials`: finished ones (a failure that is being
    retried counts once, through its retry), plus running ones if asked.

    One snapshot of the storage: two separate reads would miss a trial that another
    worker finishes in between, and let one trial too many start.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    counted = (TrialState.COMPLETE, TrialState.PRUNED) + (
        (TrialState.RUNNING,) if with_running else ())
    return sum(
        1 for t in trials
        if t.state in counted
        or (t.state == TrialState.FAIL and t.number not in retried
            and t.user_attrs.get("failure_reason") not in ("worker_died", "interrupted"))
    )


def _resolve_weights(handle: StudyHandle, weights: str,
                     notify: Callable[[str], None]) -> dict[str, str]:
    """Weights per backbone in the space; `auto` may drop backbones (with a notice)."""
    from tlsearch.backbones import get_spec, resolve_auto_weights

    chosen: dict[str, str] = {}
    for name, sizes in handle.space.backbones:
        if weights != "auto":
            chosen[name] = weights
            continue
        resolved = resolve_auto_weights(get_spec(name), sizes[0])
        if resolved is None:
            notify(f"{name}: no ImageNet weights offline and no bundled weights; left out")
        else:
            chosen[name] = resolved
            notify(f"{name}: using {'ImageNet' if resolved == 'imagenet' else 'bundled'} "
                   f"weights ({resolved})")
    if weights == "auto" and not chosen:
        # Nothing pretrained is reachable: run on random weights rather than not at all,
        # and say loudly that the recommendation will mean little.
        notify("no pretrained weights are available for any backbone in the space: falling "
               "back to random initialisation (--weights none); expect near-chance scores")
        chosen = {name: "none" for name, _ in handle.space.backbones}
    return chosen


AUTO_TEST_FRACTION = 0.2
MIN_CLASS_FOR_TEST = 20


def _test_fraction(config: SearchConfig, index: Any) -> float:
    if config.test_fraction is not None:
        return config.test_fraction
    counts: dict[int, int] = {}
    for record in index.records:
        counts[record.label] = counts.get(record.label, 0) + 1
    big_enough = counts and min(counts.values()) >= MIN_CLASS_FOR_TEST
    return AUTO_TEST_FRACTION if big_enough else 0.0


def prepare_split(handle: StudyHandle) -> tuple[Any, Any]:
    """Scan the data and load the study's split, making it on first use.

    The split is saved in the study folder, so every resume trains on the same images.
    Its digest is also kept in the storage: a worker on another machine (with its own
    study folder) recomputes the split and refuses to join if it came out different.
    """
    from tlsearch.data import DatasetError, Split, make_split, scan

    config = handle.config
    index = scan(Path(config.data_dir), progress=False)
    split_path = handle.dir / SPLIT_FILE

    def fresh() -> Any:
        from tlsearch.duplicates import find_duplicates

        try:  # exact and near duplicates stay on one side: no copy of a test image trains
            made = make_split(index, val_fraction=config.val_fraction,
                              test_fraction=_test_fraction(config, index), seed=config.seed,
                              groups=find_duplicates(index).groups())
        except DatasetError as exc:
            raise SearchError(str(exc)) from None
        made.save(split_path)
        return made

    if split_path.exists():
        split = Split.load(split_path)
        if split.fingerprint != index.fingerprint:
            if not config.force:
                raise SearchError(
                    f"the dataset in {config.data_dir} changed since study {config.study!r} "
                    "started (fingerprint differs); use a new --study or pass --force")
            split = fresh()
    else:
        split = fresh()
    digest = _split_digest(split)
    saved = handle.study.user_attrs.get("split_digest")
    if saved is None or (config.force and saved != digest):
        handle.study.set_user_attr("split_digest", digest)
    elif saved != digest:
        raise SearchError(
            f"study {config.study!r} was started on a different split of the data (another "
            "machine's copy differs, or other --val-fraction/--seed); use the same dataset "
            "copy and options on every machine")
    return index, split


def _split_digest(split: Any) -> str:
    import hashlib

    payload = json.dumps([split.fingerprint, split.classes, split.train, split.val, split.test])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _initialise(handle: StudyHandle, space: Any, weights: dict[str, str], data: Any,
                cache: Any, emit: Callable[[str, dict], None]) -> None:
    """Once per study, before its first trial: rank the backbones, keep the top ones if
    asked, and enqueue the baseline recipes on the best-ranked backbone."""
    from tlsearch.baselines import BASELINES, baseline_strategies
    from tlsearch.rank import rank_backbones

    config, study = handle.config, handle.study
    if study.get_trials(deepcopy=False):  # a study from before this step existed
        study.set_user_attr("initialised", True)
        return
    pairs = [(name, size, weights[name]) for name, size in space.backbone_sizes()]
    ranking = []
    if config.keep_top_backbones or (config.rank and len(pairs) > 1):
        emit("notice", {"message": f"ranking {len(pairs)} backbone/size pair(s) by "
                                   f"{config.ranker} on frozen features (also fills the "
                                   "prefix cache)"})
        rows = rank_backbones(pairs, data, cache, seed=config.seed, ranker=config.ranker,
                              on_row=lambda row: emit("rank", row.to_dict()))
        ranking = [row.to_dict() for row in rows]
        study.set_user_attr("ranking", ranking)
        study.set_user_attr("ranker", config.ranker)
    if config.keep_top_backbones:
        searched = [row["key"] for row in ranking[:config.keep_top_backbones]]
        study.set_user_attr("kept_backbones", searched)
        emit("notice", {"message": f"searching only the top {len(searched)} by {config.ranker}: "
                                   f"{', '.join(searched)}"})
    if config.baselines and config.trials < 2 * len(BASELINES):
        emit("notice", {"message": f"baseline recipes skipped: {config.trials} trials leave no "
                                   f"room for the {len(BASELINES)} recipes and a search "
                                   f"(needs --trials {2 * len(BASELINES)} or more)"})
    elif config.baselines:
        top = ranking[0]["key"] if ranking else "{}@{}".format(*space.backbone_sizes()[0])
        name = top.split("@")[0]
        base = space.fixed_strategy(backbone=top, weights="none", seed=config.seed)
        # The recipes get the space's full epoch budget (its first choice of unfreeze
        # depth may be 0, which leaves a fixed strategy no fine-tuning epochs).
        base = base.replace(weights=weights[name],
                            head_epochs=_space_high(space, "head_epochs", base.head_epochs),
                            finetune_epochs=_space_high(space, "finetune_epochs", 3))
        for baseline, strategy in baseline_strategies(base):
            study.enqueue_trial({}, user_attrs={"baseline": baseline.name,
                                                "strategy": strategy.to_dict()})
        emit("notice", {"message": f"baseline recipes enqueued first, on {top}: "
                                   + ", ".join(b.name for b, _ in baseline_strategies(base))})
    if config.priors:
        _enqueue_priors(handle, space, emit)
    study.set_user_attr("initialised", True)


def _enqueue_priors(handle: StudyHandle, space: Any, emit: Callable[[str, dict], None]) -> None:
    """Enqueue the best strategies of earlier studies, mapped onto this space, after the
    baselines: ordinary trials from there on (sampled, pruned, seen by the sampler)."""
    from tlsearch.priors import load_priors, map_onto

    priors = load_priors([Path(p) for p in handle.config.priors])
    seen: set[str] = set()
    used, dropped = [], 0
    for prior in priors:
        params = map_onto(space, prior)
        key = json.dumps(params, sort_keys=True, default=str)
        if params is None or key in seen:
            dropped += params is None
            continue
        seen.add(key)
        handle.study.enqueue_trial(params, user_attrs={"prior": {
            "source": prior.source, "trial": prior.trial, "value": prior.value}})
        used.append({"source": prior.source, "trial": prior.trial, "value": prior.value,
                     "params": params})
    handle.study.set_user_attr("priors", used)
    emit("notice", {"message": f"{len(used)} strategy(ies) from {len(handle.config.priors)} "
                               "earlier stud(ies) enqueued after the baselines"
                               + (f"; {dropped} left out (backbone not in this space)"
                                  if dropped else "")})


def _enqueue_floor(handle: StudyHandle, emit: Callable[[str, dict], None]) -> None:
    """Give the budget's last trial to the linear probe on the best trial's own backbone
    and size, when the best is not that probe and nothing has measured it yet.

    The report then measures the recommendation against the probe on its own backbone on
    the test split, the probe competes for the recommendation, and under `--select 1se`
    it is preferred when fine-tuning does not beat it by more than chance.
    """
    from optuna.trial import TrialState

    from tlsearch.baselines import BASELINES, floor_of
    from tlsearch.strategy import Strategy

    config, study = handle.config, handle.study
    if not config.baselines or config.trials < 2 * len(BASELINES):
        return
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return  # queued retries come first; they take the slot
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                       and t.user_attrs.get("strategy")
                       and meets_constraints(config, t.user_attrs.get("latency_ms"),
                                             t.user_attrs.get("params_total"))),
                      key=lambda t: (-t.value, t.number))
    if not complete:
        return
    best = complete[0]
    strategy = Strategy.from_dict(best.user_attrs["strategy"])
    if strategy.head_init == "probe":
        return  # scikit-learn's probe itself
    # A head-only solve is checked too: its C, class weights, augmentation and SGD epochs
    # were chosen on validation images, and lost to the plain probe on test in benchmark
    # runs (benchmarks/RESULTS-transfer-*self-pretrained.md).
    for t in trials:
        s = t.user_attrs.get("strategy")
        # A finished probe counts only while its model is kept (to compete and be scored
        # on test); a running one is another worker's, and will be.
        has_model = t.state == TrialState.RUNNING or (
            t.state == TrialState.COMPLETE and kept.exists(handle.trial_dir(t.number)))
        # Only scikit-learn's exact probe counts: a sampled head-only trial chose its C
        # on validation and may have trained SGD epochs after the solve.
        if (s and has_model and s["backbone"] == strategy.backbone
                and int(s["image_size"]) == strategy.image_size
                and s.get("weights") == strategy.weights
                and s.get("head_init") == "probe"):
            return  # measured already
    floor = floor_of(strategy)
    study.enqueue_trial({}, user_attrs={"floor": best.number, "strategy": floor.to_dict()})
    emit("notice", {"message": f"last trial: the linear probe on {strategy.backbone}@"
                               f"{strategy.image_size}, the floor trial {best.number} "
                               "has to beat"})


#: errno values that mean "this disk cannot take the write", not "the code is wrong".
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _stop_on_disk_error(handle: StudyHandle, trial: Any, exc: OSError) -> None:
    """A write failed for lack of space or permission: requeue the trial (its last
    checkpoint, if one was written, is kept) and stop with one line saying what to do."""
    from optuna.trial import TrialState

    reason = {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full",
              errno.EROFS: "read_only"}.get(exc.errno, "not_writable")
    try:  # the storage may live on the same full disk: best effort, recovery covers it
        handle.study._storage.set_trial_user_attr(trial._trial_id, "failure_reason", reason)
        handle.study.tell(trial, state=TrialState.FAIL)
        _enqueue_retry(handle, handle.study.get_trials(deepcopy=False)[trial.number])
    except Exception:
        pass
    where = f" writing {exc.filename}" if exc.filename else ""
    raise SearchError(f"{os.strerror(exc.errno)}{where}: free space (or fix permissions), "
                      "or use another --cache-dir/--out, then re-run the same command to "
                      "resume") from None


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


@dataclass
class Prepared:
    """A study ready for trials: its data, cache, weights per backbone and the space
    left after weights, ranking and `--keep-top-backbones`."""

    handle: StudyHandle
    space: Any
    weights: dict[str, str]
    data: Any
    cache: Any
    metric: str


def prepare_search(config: SearchConfig, emit: Callable[[str, dict], None]) -> Prepared:
    """Open the study, load its split and data, resolve weights, and (once per study)
    rank the backbones and enqueue the baselines. Shared by both search engines."""
    import optuna

    from tlsearch.features import FeatureCache
    from tlsearch.trial_data import TrialData

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    handle = open_study(config)
    study = handle.study
    metric = study.user_attrs.get("metric") or handle.space.objective

    index, split = prepare_split(handle)
    emit("data", {"images": len(index.records), "skipped": len(index.skipped),
                  "classes": len(split.classes), "train": len(split.train),
                  "val": len(split.val), "test": len(split.test),
                  "skipped_reasons": _reason_counts(index.skipped)})
    if not split.test:
        emit("notice", {"message": "no held-out test split (a class has fewer than "
                        f"{MIN_CLASS_FOR_TEST} images, or --test-fraction 0): the headline is "
                        "the validation score, which the search selects on, so it is "
                        "optimistic"})
    data = TrialData.from_split(Path(config.data_dir), split, config.cache_path)
    cache = FeatureCache(config.cache_path, max_bytes=None if config.cache_max_gb is None
                         else int(config.cache_max_gb * 2**30))

    weights = _resolve_weights(handle, config.weights, lambda m: emit("notice", {"message": m}))
    if not weights:
        raise SearchError("no backbone in the space has usable weights (see the notices above)")
    space = handle.space.restrict_backbones(list(weights)) if len(weights) < len(
        handle.space.backbones) else handle.space

    with _admission(handle):  # one worker ranks and enqueues; the others wait for it
        if not study.user_attrs.get("initialised"):
            _initialise(handle, space, weights, data, cache, emit)
    searched = study.user_attrs.get("kept_backbones")
    if searched:
        space = space.restrict_backbones(searched)
    return Prepared(handle=handle, space=space, weights=weights, data=data, cache=cache,
                    metric=metric)


def run_search(config: SearchConfig, *, on_event: Callable[[str, dict], None] | None = None,
               nan_at_step: int | None = None,
               nan_trials: Collection[int] | None = None,
               crash_trials: dict[int, str] | None = None,
               supervisor: dict[str, Any] | None = None) -> SearchOutcome:
    """Run (or continue) a search until `config.trials` trials are finished.

    Args:
        on_event: progress callback, called as `on_event(kind, info)` with kind one of
            "notice", "data", "rank", "trial_start", "epoch", "trial_end".
        nan_at_step, nan_trials: test hooks: every trial (or only the trials with these
            numbers, from their first step) behaves as if its loss became NaN.
        crash_trials: test hook: these trials kill their process with a signal after
            their first epoch (see `_crash_hook`).
        supervisor: pid/start of the process supervising this one (`workers.py`), which
            records and retries this worker's trial if it dies; recorded with each trial.
    """
    from optuna.trial import TrialState

    from tlsearch.backbones import WeightsUnavailableError
    from tlsearch.strategy import Strategy
    from tlsearch.train import TrialPruned, run_trial

    emit = on_event or (lambda kind, info: None)
    prepared = prepare_search(config, emit)
    handle, study, space = prepared.handle, prepared.handle.study, prepared.space
    metric, data, cache, weights = prepared.metric, prepared.data, prepared.cache, prepared.weights

    recovered = recover_stale_trials(handle, stale_after=config.stale_after)
    if recovered:
        emit("notice", {"message": f"recovered trial(s) {recovered} left running by a dead "
                                   "worker; retrying from their checkpoints"})

    started = time.monotonic()
    consecutive_failures = 0
    stopped = "done"
    beat_every = max(1.0, min(30.0, config.stale_after / 4))
    while True:
        # Other workers may be on this study: take over their dead trials, and count
        # their running ones, so K workers finish exactly `trials` trials between them.
        again = recover_stale_trials(handle, stale_after=config.stale_after)
        if again:
            recovered += again
            emit("notice", {"message": f"recovered trial(s) {again} of a dead worker"})
        if config.timeout is not None and time.monotonic() - started > config.timeout:
            stopped = "timeout"
            break
        with _admission(handle):
            finished = _finished_count(study, with_running=True)
            if finished >= config.trials:
                break
            if finished == config.trials - 1:  # the last slot checks the floor
                _enqueue_floor(handle, emit)
            trial = study.ask()
            # Claim it at once: a trial without an owner can only be recovered by age.
            trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid(),
                                           "started": _process_start(os.getpid()),
                                           "supervisor": supervisor})
        attrs = trial.user_attrs  # enqueued retries carry their strategy and checkpoint
        fixed = bool(attrs.get("baseline")) or attrs.get("floor") is not None
        if attrs.get("strategy"):
            if not fixed:  # baselines and the floor stay out of the sampler's sight
                space.sample(trial, weights="none", seed=config.seed)  # registers params
            strategy = Strategy.from_dict(attrs["strategy"])
        else:
            strategy = space.sample(trial, weights="none", seed=config.seed)
            strategy = strategy.replace(weights=weights[strategy.backbone])
        tdir = handle.trial_dir(trial.number)
        tdir.mkdir(parents=True, exist_ok=True)
        trial.set_user_attr("strategy", strategy.to_dict())
        resume_from = attrs.get("resume_from")
        if resume_from and Path(resume_from).exists() and Path(resume_from) != tdir / "checkpoint":
            shutil.copytree(resume_from, tdir / "checkpoint", dirs_exist_ok=True)
            trial.set_user_attr("resumed_from_checkpoint", True)
        emit("trial_start", {"number": trial.number, "strategy": strategy,
                             "finished": _finished_count(study), "total": config.trials,
                             "retry_of": attrs.get("retry_of"),
                             "baseline": attrs.get("baseline"), "floor": attrs.get("floor")})
        trial.set_user_attr("pruning_offset", pruning_offset(strategy))
        reporter = _OptunaReporter(trial, lambda info: emit("epoch", info),
                                   prunable=not fixed,
                                   crash_with=_crash_hook(crash_trials, trial.number, attrs),
                                   offset=pruning_offset(strategy))
        try:
            with _Heartbeat(trial, tdir / "heartbeat", beat_every):
                result = run_trial(strategy, data, reporter, checkpoint_dir=tdir / "checkpoint",
                                   resume_from=tdir / "checkpoint", metric=metric,
                                   feature_cache=cache, reuse_backbone=True,
                                   nan_at_step=1 if nan_trials and trial.number in nan_trials
                                   else nan_at_step)
        except TrialPruned as exc:
            _write_json(tdir / "result.json", {"state": "pruned", "strategy": strategy.to_dict(),
                                               "timings": exc.timings})
            study.tell(trial, state=TrialState.PRUNED)
            consecutive_failures = 0
            emit("trial_end", {"number": trial.number, "state": "pruned", "value": None})
            continue
        except KeyboardInterrupt:
            study._storage.set_trial_user_attr(trial._trial_id, "failure_reason", "interrupted")
            study.tell(trial, state=TrialState.FAIL)
            _enqueue_retry(handle, study.get_trials(deepcopy=False)[trial.number])
            stopped = "interrupted"
            break
        except WeightsUnavailableError as exc:
            study._storage.set_trial_user_attr(trial._trial_id, "failure_reason",
                                               "weights_unavailable")
            study.tell(trial, state=TrialState.FAIL)
            raise SearchError(str(exc)) from None
        except OSError as exc:
            if exc.errno not in DISK_ERRNOS:
                raise
            _stop_on_disk_error(handle, trial, exc)
        try:
            _save_result(tdir, result)
        except OSError as exc:
            if exc.errno not in DISK_ERRNOS:
                raise
            _stop_on_disk_error(handle, trial, exc)
        if result.state == "failed":
            trial.set_user_attr("failure_reason", result.failure_reason)
            trial.set_user_attr("failure_detail", result.failure_detail[:500])
            study.tell(trial, state=TrialState.FAIL)
            consecutive_failures += 1
            emit("trial_end", {"number": trial.number, "state": "failed",
                               "reason": result.failure_reason})
            if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                stopped = "all_failed"
                break
            continue
        consecutive_failures = 0
        _record_attrs(trial, result)
        _keep_model_if_top(handle, trial.number, result)
        study.tell(trial, result.objective)
        emit("trial_end", {"number": trial.number, "state": "complete",
                           "value": result.objective, "seconds": result.timings.get("total")})
        if config.worker_memory_mb and _resident_mb() > config.worker_memory_mb:
            stopped = "recycle"  # the supervisor starts a fresh worker in its place
            break
    summary = study_summary(handle)
    return SearchOutcome(best=summary["best"], counts=summary["counts"], stopped=stopped,
                         recovered=recovered, study_dir=handle.dir,
                         selection=summary["selection"])


#: Complete trials whose final model is kept on disk for `tlsearch export`.
KEEP_TOP_MODELS = 3
MODEL_FILE = kept.MODEL_FILE  # or the head alone (`tlsearch.kept`)


def _keep_model_if_top(handle: StudyHandle, number: int, result: Any) -> None:
    """Save the trial's model if it may be recommended and ranks among the best few
    eligible trials (`meets_constraints`), or is a baseline recipe (scored on the test
    split at the end); drop the models that fell out."""
    from optuna.trial import TrialState

    config = handle.config
    ranked, keep = [], set()
    trials = handle.study.get_trials(deepcopy=False)
    for t in trials:
        value = result.objective if t.number == number else (
            t.value if t.state == TrialState.COMPLETE else None)
        if value is None:
            continue
        if t.user_attrs.get("baseline") or t.user_attrs.get("floor") is not None:
            keep.add(t.number)
        if meets_constraints(config, t.user_attrs.get("latency_ms"),
                             t.user_attrs.get("params_total")):
            ranked.append((value, -t.number, t.number))
    keep |= {n for _, _, n in sorted(ranked, reverse=True)[:KEEP_TOP_MODELS]}
    if number in keep and result.model is not None:
        kept.save(handle.trial_dir(number), result)
    for t in trials:
        if t.number not in keep and t.number != number and t.state == TrialState.COMPLETE:
            kept.drop(handle.trial_dir(t.number))
    if number not in keep:
        kept.drop(handle.trial_dir(number))


def _reason_counts(skipped: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in skipped:
        counts[item.reason] = counts.get(item.reason, 0) + 1
    return counts


def _record_attrs(trial: Any, result: Any) -> None:
    trial.set_user_attr("metrics", {k: result.metrics[k] for k in (
        "balanced_accuracy", "accuracy", "macro_f1") if k in result.metrics})
    trial.set_user_attr("latency_ms", result.latency_ms)
    trial.set_user_attr("params_total", result.params.get("total"))
    trial.set_user_attr("params_trainable", result.params.get("trainable_max"))
    trial.set_user_attr("seconds", result.timings.get("total"))
    trial.set_user_attr("cached", result.cached)
    trial.set_user_attr("cache", result.cache)
    trial.set_user_attr("resumed_from_step", result.resumed_from_step)


def _save_result(tdir: Path, result: Any) -> None:
    data = result.to_dict()
    if result.val_probabilities is not None:
        data["val_probabilities"] = result.val_probabilities.tolist()
    _write_json(tdir / "result.json", data)


# -- status --------------------------------------------------------------------------------


def study_summary(handle: StudyHandle, *, top: int = 10) -> dict[str, Any]:
    """Leaderboard, counts by state and failures, from the storage alone."""
    from optuna.trial import TrialState

    from tlsearch.recommend import recommend_trial

    trials = handle.study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    complete.sort(key=lambda t: t.value, reverse=True)
    config = handle.config
    board = [{"number": t.number, "value": t.value, "strategy": t.user_attrs.get("strategy"),
              "seconds": t.user_attrs.get("seconds"), "latency_ms": t.user_attrs.get("latency_ms"),
              "params_total": t.user_attrs.get("params_total"),
              "baseline": t.user_attrs.get("baseline"),
              "eligible": meets_constraints(config, t.user_attrs.get("latency_ms"),
                                            t.user_attrs.get("params_total")),
              "metrics": t.user_attrs.get("metrics", {})} for t in complete]
    selection = recommend_trial(handle)
    best = next((row for row in board if selection and row["number"] == selection.chosen), None)
    failures = [{"number": t.number, "reason": t.user_attrs.get("failure_reason", "unknown"),
                 "detail": t.user_attrs.get("failure_detail", "")}
                for t in trials if t.state == TrialState.FAIL]
    return {"study": handle.config.study, "metric": handle.study.user_attrs.get("metric"),
            "counts": counts, "leaderboard": board[:top], "failures": failures,
            "best": best, "selection": selection.to_dict() if selection else None,
            "excluded_by_constraints": sum(not row["eligible"] for row in board),
            "ranking": handle.study.user_attrs.get("ranking") or [],
            # held-out test scores of the recommendation and baselines (tlsearch.holdout)
            "test": handle.study.user_attrs.get("holdout") or None}
