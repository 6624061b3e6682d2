"""Where a study lives: its Optuna storage (the journal file, repaired after a torn
write, or a database), sampler and pruner, the handle on an open study, and the
admission lock that lets several workers share it."""

from __future__ import annotations

import fcntl
import json
import os
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlsearch.atomic import write_json
from tlsearch.options import PRUNERS
from tlsearch.search._config import (
    CONFIG_FILE,
    JOURNAL_FILE,
    SPACE_FILE,
    SearchConfig,
    SearchError,
)


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
    if not create and not study_dir.is_dir():  # opening must not leave an empty study
        raise SearchError(f"no study at {study_dir}")
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
    write_json(config_path, dict(config.to_dict(), metric=metric, force=False))
    write_json(study_dir / SPACE_FILE, space.to_dict())
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
