"""tlsearch against the tools people use today: same data, split, backbones and budget.

Run:  python -m benchmarks.peers --budget-min 4

For every dataset and seed, one after another in fresh processes, each tool gets the
same wall-clock budget on the same train/validation split (the seed picks the split and
each tool's own randomness); a held-out test split is seen by none of them:

1. **tlsearch** (`run_search` with its defaults: LogME ranking, TPE + Hyperband pruning,
   the cached frozen part) but without the three recipe baselines, which are a reporting
   feature the peers have no counterpart for (with them, the first minute and more of a
   CPU budget goes to fine-tuning whole networks the search never asked for);
2. **KerasTuner Hyperband** over a plain Keras `HyperModel` (benchmarks/plain.py: the
   keras-io guide's frozen base with `training=False`, a head, then the top blocks
   unfrozen and recompiled at a low learning rate);
3. **Optuna** (TPE, median pruner) with optuna-integration's `KerasPruningCallback` on
   the same plain model.

All three search the same YAML space (the peers read their hyperparameters from it
define-by-run) and maximise validation balanced accuracy. A trial counts if it ended
within the budget; the one running at the deadline is stopped there. Then each tool's
chosen configuration predicts the test split. Finally a frozen-only space is searched for
a fixed number of trials by each tool and its wall time is divided by the time of one
forward pass of every backbone over the data, the floor no tool can beat.

Datasets: the textures demo (`tlsearch demo-data`: grey tiles of scikit-image's
photographs, 8 imbalanced classes), faces vs non-faces (scikit-image's `lfw_subset`, 200
real photographs) and the older digits demo (scikit-learn's). Backbone: ImageNet
EfficientNet-Lite0 (offline, from its weight package). Figures: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks import machine, write_results

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TLSEARCH_OFFLINE", "1")

TOOLS = ("tlsearch", "kerastuner", "optuna")
DATASETS = ("textures", "lfw_faces", "digits")
DEFAULT_DATASETS = ("textures", "lfw_faces")
VAL_FRACTION = 0.2
TEST_FRACTION = 0.2
RESULTS = "RESULTS.md"


# -- datasets and spaces -------------------------------------------------------------


def write_dataset(name: str, root: Path, *, per_class: int | None = None) -> Path:
    """Write a benchmark dataset as ``root/name/<class>/<n>.png``; returns its folder.

    `per_class` keeps at most that many images of each class (the smoke test's size).
    """
    import numpy as np
    from PIL import Image

    out = root / name
    if name in ("digits", "textures"):
        from tlsearch.demo import write_demo_data

        write_demo_data(out, size=64, kind=name)
    elif name == "lfw_faces":
        from skimage.data import lfw_subset

        faces = lfw_subset()  # 100 faces, then 100 non-faces; 25x25 gray in [0, 1]
        for i, img in enumerate(faces):
            folder = out / ("face" if i < 100 else "not_face")
            folder.mkdir(parents=True, exist_ok=True)
            gray = Image.fromarray(np.round(img * 255).astype(np.uint8), mode="L")
            gray.resize((64, 64), Image.Resampling.BICUBIC).convert("RGB").save(
                folder / f"{i}.png")
    else:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if per_class is not None:
        for folder in sorted(p for p in out.iterdir() if p.is_dir()):
            for extra in sorted(folder.glob("*.png"), key=lambda p: int(p.stem))[per_class:]:
                extra.unlink()
    return out


@dataclass(frozen=True)
class Setup:
    """What varies between the real run and the smoke run."""

    backbones: dict[str, list[int]]
    head_epochs: int
    finetune_epochs: int
    weights: str  # "auto" (bundled/ImageNet) or "none"


REAL = Setup({"efficientnet_lite0": [96, 128]}, head_epochs=5, finetune_epochs=3,
             weights="auto")
SMOKE = Setup({"tiny_cnn": [32]}, head_epochs=2, finetune_epochs=1, weights="none")


def space_yaml(setup: Setup, *, frozen: bool) -> str:
    """The benchmark space: the demo's `quick` space on the backbones with offline
    weights; `frozen` keeps every backbone frozen and un-augmented (cacheable)."""
    import yaml

    data: dict[str, Any] = {
        "name": "peers-frozen" if frozen else "peers",
        "objective": "balanced_accuracy",
        "backbones": setup.backbones,
        "unfreeze_blocks": [0] if frozen else [0, 1, 2],
        "gradual": False,
        "bn_mode": ["frozen"] if frozen else ["frozen", "affine"],
        "backbone_lr_ratio": {"low": 0.03, "high": 0.3, "log": True},
        "finetune_epochs": setup.finetune_epochs,  # unused when nothing unfreezes
        "head_lr": {"low": 1.0e-3, "high": 3.0e-2, "log": True},
        "head_epochs": setup.head_epochs,
        "head_dropout": {"low": 0.0, "high": 0.5},
        "head_hidden_units": 0, "head_l2": 0.0, "label_smoothing": 0.0, "batch_size": 32,
        "schedule": "cosine", "optimizer": "adamw", "weight_decay": 1.0e-4,
        "warmup_epochs": 0, "early_stopping_patience": 0,
        "augmentation": ["none"] if frozen else ["none", "light"],
        "imbalance": ["none", "class_weight", "oversample", "focal"],
    }
    return yaml.safe_dump(data, sort_keys=False)


# -- one run (in its own process) ----------------------------------------------------


@dataclass
class RunSpec:
    tool: str
    kind: str  # "budget", "frozen" or "floor"
    dataset: str
    data_dir: str
    space: str
    seed: int
    weights: str
    workdir: str
    budget_s: float | None = None
    trials: int | None = None
    max_epochs: int = 1  # the longest trial the space allows (KerasTuner's max_epochs)


@dataclass
class RunResult:
    spec: dict
    wall_s: float = 0.0
    trials: list[dict] = field(default_factory=list)  # {"t", "state", "value"}
    epoch_times: list[float] = field(default_factory=list)
    test_score: float | None = None
    chosen: dict | None = None
    floor: dict | None = None
    error: str | None = None


def _split(spec: RunSpec) -> Any:
    from tlsearch.data import make_split, scan

    return make_split(scan(Path(spec.data_dir), progress=False), val_fraction=VAL_FRACTION,
                      test_fraction=TEST_FRACTION, seed=spec.seed)


def _weights_for(spec: RunSpec, backbone: str, size: int) -> str | None:
    from tlsearch.backbones import get_spec, resolve_auto_weights

    if spec.weights == "auto":
        return resolve_auto_weights(get_spec(backbone), size)
    return None if spec.weights == "none" else spec.weights


def _test_score(spec: RunSpec, split: Any, size: int, predict: Callable[[Any], Any]) -> float:
    """Balanced accuracy on the held-out test split, decoded as `tlsearch predict` does."""
    import numpy as np
    from sklearn.metrics import balanced_accuracy_score

    from tlsearch.data import decode_image

    x = np.stack([decode_image(Path(spec.data_dir) / p, size) for p, _ in split.test])
    y = np.asarray([label for _, label in split.test])
    probs = np.asarray(predict(x.astype(np.float32)))
    return float(balanced_accuracy_score(y, probs.argmax(1)))


class _Deadline(BaseException):
    """Raised from tlsearch's event callback when the budget is spent (not an Exception,
    so nothing on the way mistakes it for a failed trial)."""


def run_tlsearch(spec: RunSpec, result: RunResult) -> None:
    from sklearn.metrics import balanced_accuracy_score

    from tlsearch.data import Split
    from tlsearch.export import export_trial
    from tlsearch.predict import load_exported, predict_paths
    from tlsearch.search import SPLIT_FILE, SearchConfig, run_search

    work = Path(spec.workdir)
    config = SearchConfig(
        data_dir=spec.data_dir, space=spec.space, study="bench", out=str(work / "studies"),
        trials=spec.trials or 100_000, weights=spec.weights, seed=spec.seed,
        cache_dir=str(work / "cache"), val_fraction=VAL_FRACTION,
        test_fraction=TEST_FRACTION, baselines=False)  # see the module docstring
    t0 = time.monotonic()
    deadline = t0 + spec.budget_s if spec.budget_s else None

    starts: dict[int, float] = {}

    def on_event(kind: str, info: dict) -> None:
        now = time.monotonic()
        if kind == "epoch":
            result.epoch_times.append(now - t0)
        elif kind == "trial_start":
            starts[info["number"]] = now - t0
        elif kind == "trial_end":
            result.trials.append({"t": now - t0, "state": info["state"],
                                  "value": info.get("value"), "number": info["number"],
                                  "start": starts.get(info["number"])})
        if deadline is not None and kind in ("epoch", "trial_start") and now >= deadline:
            raise _Deadline

    try:
        run_search(config, on_event=on_event)
    except _Deadline:
        pass
    result.wall_s = time.monotonic() - t0
    for row in result.trials:  # where each trial's time went, as the engine timed it
        try:
            row["timings"] = json.loads((work / "studies" / "bench" / "trials" /
                                         f"{row['number']:04d}" / "result.json").read_text()
                                        ).get("timings")
        except (OSError, ValueError):
            row["timings"] = None
    # The best trial that ended within the budget (one may finish just after it).
    within = _complete(asdict(result), spec.budget_s)
    if not within:
        result.error = "no trial completed within the budget"
        return
    chosen = max(within, key=lambda row: row["value"])["number"]
    summary = export_trial(work / "studies" / "bench", work / "export", trial=chosen)
    exported = load_exported(work / "export")
    split = Split.load(work / "studies" / "bench" / SPLIT_FILE)  # the split it searched
    paths = [Path(spec.data_dir) / p for p, _ in split.test]
    preds = list(predict_paths(exported, paths, batch_size=128))
    y_pred = [exported.labels.index(p.top[0][0]) for p in preds]
    result.test_score = float(balanced_accuracy_score([y for _, y in split.test], y_pred))
    result.chosen = json.loads((work / "export" / "strategy.json").read_text())
    result.chosen["trial"] = summary["trial"]


def _plain_data(spec: RunSpec, split: Any) -> Callable[[int], tuple]:
    """The split as arrays per image size (decoded once per size, inside the budget)."""
    from benchmarks.plain import one_hot
    from tlsearch.trial_data import TrialData

    data = TrialData.from_split(Path(spec.data_dir), split, Path(spec.workdir) / "cache")
    n = len(split.classes)
    memo: dict[int, tuple] = {}

    def arrays(size: int) -> tuple:
        if size not in memo:
            memo[size] = (data.images("train", size), one_hot(data.labels("train"), n),
                          data.images("val", size), data.labels("val"))
        return memo[size]

    return arrays


class _Best:
    """The best plain model seen within the budget, kept in memory for the test split."""

    def __init__(self) -> None:
        self.value, self.model, self.strategy = -1.0, None, None

    def offer(self, value: float | None, model: Any, strategy: Any) -> None:
        if value is not None and value > self.value:
            self.value, self.model, self.strategy = value, model, strategy


def run_optuna(spec: RunSpec, result: RunResult) -> None:
    import keras
    import optuna
    from optuna_integration import KerasPruningCallback

    from benchmarks.plain import EvalCallback, build_plain, fit_plain
    from tlsearch.space import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.monotonic()
    deadline = t0 + spec.budget_s if spec.budget_s else None
    space = load_space(spec.space)
    split = _split(spec)
    arrays = _plain_data(spec, split)
    best = _Best()
    epochs: dict[int, EvalCallback] = {}

    def objective(trial: optuna.Trial) -> float:
        keras.backend.clear_session()
        strategy = space.sample(trial, weights="none", seed=spec.seed)
        plain = build_plain(strategy, len(split.classes),
                            _weights_for(spec, strategy.backbone, strategy.image_size))
        x, y, x_val, y_val = arrays(strategy.image_size)
        cb = epochs[trial.number] = EvalCallback(x_val, y_val, deadline)
        fit_plain(plain, x, y, epochs=strategy.total_epochs,
                  callbacks=[cb, KerasPruningCallback(trial, EvalCallback.KEY)])
        value = cb.scores[-1]
        if deadline is None or time.monotonic() < deadline:
            best.offer(value, plain.model, strategy)
        return value

    def record(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        cb = epochs.get(trial.number)
        result.epoch_times.extend(t - t0 for t in (cb.times if cb else []))
        result.trials.append({"t": time.monotonic() - t0, "state": trial.state.name.lower(),
                              "value": trial.value})

    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=spec.seed),
                                pruner=optuna.pruners.MedianPruner())
    study.optimize(objective, n_trials=spec.trials,
                   timeout=None if deadline is None else max(1.0, deadline - time.monotonic()),
                   callbacks=[record])
    result.wall_s = time.monotonic() - t0
    _finish_plain(spec, result, split, best)


def _finish_plain(spec: RunSpec, result: RunResult, split: Any, best: _Best) -> None:
    if best.model is None:
        result.error = "no trial completed within the budget"
        return
    result.test_score = _test_score(spec, split, best.strategy.image_size,
                                    lambda x: best.model.predict(x, batch_size=128, verbose=0))
    result.chosen = best.strategy.to_dict()


def run_kerastuner(spec: RunSpec, result: RunResult) -> None:
    import keras
    import keras_tuner as kt

    from benchmarks.plain import EvalCallback, PlainModel, build_plain, fit_plain
    from tlsearch.search._tuner import _HpTrial, register_space
    from tlsearch.space import load_space

    t0 = time.monotonic()
    deadline = t0 + spec.budget_s if spec.budget_s else None
    space = load_space(spec.space)
    split = _split(spec)
    arrays = _plain_data(spec, split)
    n_classes = len(split.classes)
    current: dict[str, Any] = {}

    def strategy_for(hp: Any) -> Any:
        register_space(hp, space)  # the oracle samples only declared hyperparameters
        return space.sample(_HpTrial(hp, 0), weights="none", seed=spec.seed)

    class PlainHyperModel(kt.HyperModel):
        def build(self, hp: Any) -> Any:
            strategy = strategy_for(hp)
            return build_plain(strategy, n_classes, _weights_for(
                spec, strategy.backbone, strategy.image_size)).model

        def fit(self, hp: Any, model: Any, *args: Any, epochs: int = 1,
                initial_epoch: int = 0, callbacks: Sequence = (), **kwargs: Any) -> dict:
            strategy = strategy_for(hp)
            base = next(layer for layer in model.layers if isinstance(layer, keras.Model))
            x, y, x_val, y_val = arrays(strategy.image_size)
            cb = current["cb"] = EvalCallback(x_val, y_val, deadline)
            current["strategy"] = strategy
            # Strategies that keep the base frozen train the head for all the epochs
            # Hyperband grants; the others switch to fine-tuning after `head_epochs`.
            fit_plain(PlainModel(model, base, strategy), x, y, epochs=epochs,
                      initial_epoch=initial_epoch, callbacks=[cb, *callbacks])
            return {EvalCallback.KEY: max(cb.scores, default=0.0)}

    class TimedHyperband(kt.Hyperband):
        def _configure_tensorboard_dir(self, *args: Any, **kwargs: Any) -> None:
            # KerasTuner imports tensorboard here on the TensorFlow backend even without a
            # TensorBoard callback, and TensorFlow 2.21 no longer installs it; we pass none.
            return None

        def pre_create_trial(self) -> None:
            done = len(self.oracle.trials)
            out_of_time = deadline is not None and time.monotonic() >= deadline
            if out_of_time or (spec.trials is not None and done >= spec.trials):
                self.oracle.max_trials = max(done, 1)  # the oracle answers STOPPED

        def on_trial_end(self, trial: Any) -> None:
            super().on_trial_end(trial)
            trial = self.oracle.get_trial(trial.trial_id)
            cb = current.pop("cb", None)
            result.epoch_times.extend(t - t0 for t in (cb.times if cb else []))
            state = "complete" if trial.status == "COMPLETED" else trial.status.lower()
            result.trials.append({"t": time.monotonic() - t0, "state": state,
                                  "value": trial.score, "trial_id": trial.trial_id})

    tuner = TimedHyperband(
        PlainHyperModel(), objective=kt.Objective(EvalCallback.KEY, "max"),
        max_epochs=spec.max_epochs, factor=3, hyperband_iterations=1000, seed=spec.seed,
        directory=str(Path(spec.workdir) / "kt"), project_name="bench", overwrite=True)
    tuner.search(verbose=0)
    result.wall_s = time.monotonic() - t0
    best = _Best()
    within = _complete(asdict(result), spec.budget_s)  # trials that ended within the budget
    if within:
        row = max(within, key=lambda r: r["value"])
        trial = tuner.oracle.get_trial(row["trial_id"])
        best.offer(row["value"], tuner.load_model(trial), strategy_for(trial.hyperparameters))
    _finish_plain(spec, result, split, best)


def run_floor(spec: RunSpec, result: RunResult) -> None:
    """One forward pass of every backbone in the space over train + validation images."""
    import keras
    import numpy as np

    from benchmarks.plain import build_plain
    from tlsearch.space import load_space
    from tlsearch.strategy import Strategy

    space = load_space(spec.space)
    split = _split(spec)
    arrays = _plain_data(spec, split)
    per: dict[str, float] = {}
    setup = {"build": 0.0, "decode": 0.0, "trace": 0.0}  # what every tool pays first
    for backbone, size in space.backbone_sizes():
        strategy = Strategy(backbone=backbone, image_size=size, seed=spec.seed)
        t = time.perf_counter()
        plain = build_plain(strategy, len(split.classes), _weights_for(spec, backbone, size))
        features = keras.Model(plain.model.inputs, plain.model.layers[-3].output)
        setup["build"] += time.perf_counter() - t
        t = time.perf_counter()
        x, _, x_val, _ = arrays(size)
        images = np.concatenate([x, x_val])
        setup["decode"] += time.perf_counter() - t
        t = time.perf_counter()
        features.predict(images[:128], batch_size=128, verbose=0)  # trace outside the clock
        setup["trace"] += time.perf_counter() - t
        t = time.perf_counter()
        features.predict(images, batch_size=128, verbose=0)
        per[f"{backbone}@{size}"] = time.perf_counter() - t
    result.floor = {"per_backbone": per, "total_s": sum(per.values()), "setup_s": setup,
                    "images": len(split.train) + len(split.val)}


RUNNERS = {"tlsearch": run_tlsearch, "kerastuner": run_kerastuner, "optuna": run_optuna}


def run_one(spec: RunSpec) -> RunResult:
    import keras

    keras.utils.set_random_seed(spec.seed)
    result = RunResult(spec=asdict(spec))
    Path(spec.workdir).mkdir(parents=True, exist_ok=True)
    if spec.kind == "floor":
        run_floor(spec, result)
    else:
        RUNNERS[spec.tool](spec, result)
    return result


# -- figures -------------------------------------------------------------------------


def _complete(result: dict, budget: float | None) -> list[dict]:
    return [t for t in result["trials"] if t["state"] == "complete" and t["value"] is not None
            and (budget is None or t["t"] <= budget)]


def best_val(result: dict) -> float | None:
    rows = _complete(result, result["spec"]["budget_s"])
    return max((t["value"] for t in rows), default=None)


def time_to(result: dict, target: float) -> float | None:
    """Seconds until the tool's best-so-far first reached `target` (None: never)."""
    for row in sorted(_complete(result, result["spec"]["budget_s"]), key=lambda r: r["t"]):
        if row["value"] >= target - 1e-9:
            return row["t"]
    return None


def figures(result: dict) -> dict[str, Any]:
    """The per-run figures of the results table."""
    budget = result["spec"]["budget_s"] or result["wall_s"]
    hours = budget / 3600
    epochs = sum(1 for t in result["epoch_times"] if t <= budget)
    complete = _complete(result, result["spec"]["budget_s"])
    return {"trials": len(complete), "trials_per_h": len(complete) / hours,
            "epochs": epochs, "epochs_per_h": epochs / hours,
            "best_val": best_val(result), "test": result["test_score"]}


def _fmt(values: Sequence[float | None], spec: str = ".3f") -> str:
    """Mean over seeds with the min-max spread: `0.812 (0.790-0.830)`."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return f"{mean:{spec}}"
    return f"{mean:{spec}} ({min(vals):{spec}}-{max(vals):{spec}})"


def _spread(values: Sequence[float | None]) -> float:
    vals = [v for v in values if v is not None]
    return max(vals) - min(vals) if len(vals) > 1 else 0.0


def summarise(runs: list[dict], *,
              budget_s: float) -> tuple[list[str], dict[str, bool | None]]:
    """Markdown lines of the results tables, and whether each target was met (None: the
    run did not measure it)."""
    lines: list[str] = []
    targets: dict[str, bool | None] = {"time_to_peer_best": True, "epochs_per_hour": True,
                                       "test_not_worse": True, "frozen_floor": True}
    budget_runs = [r for r in runs if r["spec"]["kind"] == "budget" and not r.get("error")]
    budget_datasets = sorted({r["spec"]["dataset"] for r in runs
                              if r["spec"]["kind"] == "budget"})
    if not budget_datasets:
        targets["time_to_peer_best"] = targets["epochs_per_hour"] = None
        targets["test_not_worse"] = None
    for dataset in budget_datasets:
        mine = [r for r in budget_runs if r["spec"]["dataset"] == dataset]
        seeds = sorted({r["spec"]["seed"] for r in mine})
        by = {(r["spec"]["tool"], r["spec"]["seed"]): r for r in mine}
        fig = {key: figures(r) for key, r in by.items()}
        # Time-to-peer-best: per seed, the best final score of the two peers.
        reach: dict[str, list[float | None]] = {tool: [] for tool in TOOLS}
        reach_weak: dict[str, list[float | None]] = {tool: [] for tool in TOOLS}
        for seed in seeds:
            peers = [fig[(p, seed)]["best_val"] for p in TOOLS[1:] if (p, seed) in fig]
            peers = [p for p in peers if p is not None]
            for tool in TOOLS:
                if (tool, seed) not in by or not peers:
                    continue
                t_best = time_to(by[(tool, seed)], max(peers))
                t_weak = time_to(by[(tool, seed)], min(peers))
                reach[tool].append(None if t_best is None else t_best / budget_s)
                reach_weak[tool].append(None if t_weak is None else t_weak / budget_s)
        lines += [f"### {dataset}", "",
                  "| tool | trials completed | trials / h | trial-epochs / h | best val bal.acc "
                  "| held-out test bal.acc | reached best peer's final score at (per seed) "
                  "| reached weaker peer's final score at (per seed) |",
                  "|---|---|---|---|---|---|---|---|"]
        for tool in TOOLS:
            rows = [fig[(tool, s)] for s in seeds if (tool, s) in fig]
            if not rows:
                lines.append(f"| {tool} | failed | | | | | | |")
                continue

            def reached(values: list[float | None]) -> str:
                shown = ["never" if v is None else f"{v:.0%}" for v in values]
                return " / ".join(shown) if shown else "n/a"

            lines.append(
                f"| {tool} | {_fmt([r['trials'] for r in rows], '.1f')} "
                f"| {_fmt([r['trials_per_h'] for r in rows], '.0f')} "
                f"| {_fmt([r['epochs_per_h'] for r in rows], '.0f')} "
                f"| {_fmt([r['best_val'] for r in rows])} | {_fmt([r['test'] for r in rows])} "
                f"| {reached(reach[tool])} | {reached(reach_weak[tool])} |")
        tl = [fig[("tlsearch", s)] for s in seeds if ("tlsearch", s) in fig]
        ratios = []
        for peer in TOOLS[1:]:
            pr = [fig[(peer, s)] for s in seeds if (peer, s) in fig]
            if not tl or not pr:
                targets["epochs_per_hour"] = targets["test_not_worse"] = False
                continue
            ratio = (statistics.fmean(r["epochs_per_h"] for r in tl)
                     / max(statistics.fmean(r["epochs_per_h"] for r in pr), 1e-9))
            ratios.append(f"{ratio:.1f}x {peer}'s")
            targets["epochs_per_hour"] &= ratio >= 10
            tl_test = [r["test"] for r in tl if r["test"] is not None]
            pr_test = [r["test"] for r in pr if r["test"] is not None]
            if tl_test and pr_test:
                slack = max(_spread(tl_test), _spread(pr_test))
                targets["test_not_worse"] &= (statistics.fmean(tl_test)
                                              >= statistics.fmean(pr_test) - slack)
        hit = [v for v in reach["tlsearch"]]
        targets["time_to_peer_best"] &= bool(hit) and all(v is not None and v <= 0.2 for v in hit)
        lines += ["", f"tlsearch trial-epochs per hour: {', '.join(ratios)}.", ""]

    frozen = [r for r in runs if r["spec"]["kind"] == "frozen"]
    profile, targets["overhead"] = overhead_profile(budget_runs + frozen)
    lines += profile
    floors = {r["spec"]["dataset"]: r for r in runs if r["spec"]["kind"] == "floor"}
    if not frozen:
        targets["frozen_floor"] = None
    else:
        lines += ["### Frozen-only space: whole search vs one forward pass (the floor)", "",
                  "The floor is the forward pass alone, as the target defines it; *with set-up* "
                  "adds what any tool pays before it (building the backbone and loading its "
                  "weights, decoding the images, tracing the pass once).", "",
                  "| dataset | tool | trials run (complete) | search wall s "
                  "| forward-pass floor s | ratio | floor with set-up s | ratio to it |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in frozen:
            ds, tool = r["spec"]["dataset"], r["spec"]["tool"]
            floor = floors.get(ds, {}).get("floor")
            if r.get("error") or not floor:
                lines.append(f"| {ds} | {tool} | failed: {r.get('error')} | | | | | |")
                targets["frozen_floor"] &= tool != "tlsearch"
                continue
            ratio = r["wall_s"] / floor["total_s"]
            if tool == "tlsearch":
                targets["frozen_floor"] &= ratio <= 2
            setup = floor["total_s"] + sum((floor.get("setup_s") or {}).values())
            with_setup = (f"| {setup:.2f} | {r['wall_s'] / setup:.1f}x |"
                          if floor.get("setup_s") else "| n/a | n/a |")
            lines.append(f"| {ds} | {tool} | {len(r['trials'])} ({len(_complete(r, None))}) "
                         f"| {r['wall_s']:.1f} "
                         f"| {floor['total_s']:.2f} | {ratio:.1f}x {with_setup}")
        lines.append("")
    names = {"time_to_peer_best": "tlsearch reaches the best peer's final score in <= 1/5 of "
                                  "the budget",
             "epochs_per_hour": "tlsearch completes >= 10x the trial-epochs per hour of "
                                "either peer",
             "test_not_worse": "tlsearch's test score is not worse than either peer's (within "
                               "the seed spread)",
             "frozen_floor": "the frozen-only tlsearch search takes <= 2x the forward-pass floor",
             "overhead": "non-compute overhead <= 25% of a pruned tlsearch trial's wall time"}
    lines += ["### Targets", ""]
    verdict = {True: "met", False: "**missed**", None: "not measured in this run"}
    lines += [f"- {verdict[ok]}: {names[key]}" for key, ok in targets.items()]
    return lines, targets


#: Engine timings that are compute: forward/backward of the trained part (`train`), its
#: validation forward passes (`eval`) and the frozen passes (`prefix`).
COMPUTE = ("prefix", "train", "eval")
#: The rest of a trial's wall, as the engine names it (`other`: everything it does not
#: time: Optuna's ask and tell, the journal, checkpoints, saves, the latency probe).
OVERHEAD = ("trace", "head_solve", "decode", "bn_reestimate")


def _trial_walls(result: dict) -> list[tuple[dict, float]]:
    """(trial row, wall s) per tlsearch trial: from the previous trial's end (or its own
    start) to its end, so Optuna's ask, the admission lock and the journal count."""
    rows = sorted((r for r in result["trials"] if r.get("timings")), key=lambda r: r["t"])
    out, last = [], None
    for row in rows:
        begin = last if last is not None else row.get("start")
        if begin is not None:
            out.append((row, row["t"] - begin))
        last = row["t"]
    return out


def overhead_profile(runs: list[dict]) -> tuple[list[str], bool | None]:
    """Markdown table of where tlsearch's trials spent their time, per dataset, seed and
    trial state, and whether a pruned trial's overhead is <= 25% of its wall."""
    mine = [r for r in runs if r["spec"]["tool"] == "tlsearch" and not r.get("error")]
    table, ok = [], None
    for r in sorted(mine, key=lambda r: (r["spec"]["dataset"], r["spec"]["kind"],
                                         r["spec"]["seed"])):
        walls = _trial_walls(r)
        for state in ("pruned", "complete"):
            rows = [(row, wall) for row, wall in walls if row["state"] == state]
            if not rows:
                continue
            total = sum(wall for _, wall in rows)
            share = {k: sum(row["timings"].get(k, 0.0) for row, _ in rows) / total
                     for k in COMPUTE + OVERHEAD}
            other = 1 - sum(share.values())
            overhead = 1 - sum(share[k] for k in COMPUTE)
            if state == "pruned" and r["spec"]["kind"] == "budget":
                ok = (ok is not False) and overhead <= 0.25
            cells = " | ".join(f"{share[k]:.0%}" for k in COMPUTE + OVERHEAD)
            kind = "frozen-only" if r["spec"]["kind"] == "frozen" else "budget"
            table.append(f"| {r['spec']['dataset']} | {kind} | {r['spec']['seed']} | {state} "
                         f"| {len(rows)} | {statistics.median(w for _, w in rows):.2f} "
                         f"| {cells} | {other:.0%} | **{overhead:.0%}** |")
    if not table:
        return [], None
    head = " | ".join(COMPUTE + OVERHEAD)
    return ["### Where a tlsearch trial's time goes", "",
            "Share of the trials' summed wall time (from the previous trial's end to the "
            "trial's end). Compute: `prefix` (frozen passes), `train` (forward/backward of the "
            "trained part), `eval` (its validation passes); the rest is overhead: `trace` (the "
            "first call of each phase's train step), `head_solve`, `decode`, BatchNorm "
            "re-estimation and `other` (Optuna, journal, checkpoints, saves, latency probe).",
            "", f"| dataset | search | seed | state | trials | median wall s | {head} | other "
            "| overhead |", "|---|---|---|---|---|---|" + "---|" * (len(COMPUTE + OVERHEAD) + 2),
            *table, ""], ok


# -- orchestration -------------------------------------------------------------------


def _launch(spec: RunSpec, in_process: bool) -> dict:
    """Run one spec in a fresh interpreter (fair: nothing warm from the last tool)."""
    if in_process:
        try:
            return asdict(run_one(spec))
        except Exception as exc:  # a tool's crash is a figure, not the end of the run
            return asdict(RunResult(spec=asdict(spec), error=f"{type(exc).__name__}: {exc}"))
    spec_path = Path(spec.workdir + ".spec.json")
    out_path = Path(spec.workdir + ".result.json")
    spec_path.write_text(json.dumps(asdict(spec)))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.peers", "--run-one",
                           str(spec_path), "--result", str(out_path)],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not out_path.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return asdict(RunResult(spec=asdict(spec), error=f"exit {proc.returncode}: {tail[0]}"))
    return json.loads(out_path.read_text())


def _describe(result: dict) -> str:
    s = result["spec"]
    if result.get("error"):
        return f"{s['dataset']} seed {s['seed']} {s['kind']} {s['tool']}: {result['error']}"
    if s["kind"] == "floor":
        return f"{s['dataset']} forward-pass floor: {result['floor']['total_s']:.2f}s"
    f = figures(result)
    return (f"{s['dataset']} seed {s['seed']} {s['kind']} {s['tool']}: {f['trials']} trials, "
            f"{f['epochs']} epochs, best val {f['best_val']}, test {f['test']}, "
            f"wall {result['wall_s']:.0f}s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=4.0,
                        help="wall-clock budget of each tool per dataset and seed (0: only "
                             "the frozen-only part)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS),
                        choices=DATASETS)
    parser.add_argument("--frozen-trials", type=int, default=10,
                        help="trials of the frozen-only search of each tool (0: skip)")
    parser.add_argument("--frozen-sizes", type=int, nargs="+", default=None,
                        help="image sizes of the frozen-only space (default: the search's)")
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS,
                        help="which tools run (the comparison needs all three)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny backbone, random weights, few images: checks the plumbing")
    parser.add_argument("--per-class", type=int, default=None,
                        help="keep at most this many images per class")
    parser.add_argument("--in-process", action="store_true",
                        help="run every tool in this process (faster start, less fair)")
    parser.add_argument("--results", type=Path, default=None,
                        help=f"results file (default benchmarks/{RESULTS})")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="re-write the tables from a results JSON instead of running")
    parser.add_argument("--run-one", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.run_one:
        spec = RunSpec(**json.loads(args.run_one.read_text()))
        args.result.write_text(json.dumps(asdict(run_one(spec))))
        return 0

    results_path = args.results or Path(__file__).with_name(RESULTS)
    if args.from_json:
        stored = json.loads(args.from_json.read_text())
        budget_s = next(r["spec"]["budget_s"] for r in stored["runs"] if r["spec"]["budget_s"])
        lines, _ = summarise(stored["runs"], budget_s=budget_s)
        write_results(results_path, stored["header"] + lines)
        print("\n".join(lines))
        return 0

    setup = SMOKE if args.smoke else REAL
    budget_s = args.budget_min * 60
    work = Path(tempfile.mkdtemp(prefix="tlsearch-peers-"))
    space = work / "space.yaml"
    space.write_text(space_yaml(setup, frozen=False))
    frozen_space = work / "space-frozen.yaml"
    frozen_setup = setup if not args.frozen_sizes else replace(
        setup, backbones={name: list(args.frozen_sizes) for name in setup.backbones})
    frozen_space.write_text(space_yaml(frozen_setup, frozen=True))
    started = time.monotonic()
    runs: list[dict] = []

    def launch(spec: RunSpec) -> None:
        runs.append(_launch(spec, args.in_process))
        print(f"[{(time.monotonic() - started) / 60:5.1f} min] {_describe(runs[-1])}",
              flush=True)

    for dataset in args.datasets:
        data_dir = write_dataset(dataset, work / "data", per_class=args.per_class)
        for seed in args.seeds if budget_s > 0 else ():
            for tool in args.tools:
                launch(RunSpec(tool=tool, kind="budget", dataset=dataset, data_dir=str(data_dir),
                               space=str(space), seed=seed, weights=setup.weights,
                               workdir=str(work / f"{dataset}-{seed}-{tool}"),
                               budget_s=budget_s,
                               max_epochs=setup.head_epochs + setup.finetune_epochs))
        if args.frozen_trials:
            seed = args.seeds[0]
            common = dict(dataset=dataset, data_dir=str(data_dir), space=str(frozen_space),
                          seed=seed, weights=setup.weights)
            launch(RunSpec(tool="floor", kind="floor", workdir=str(work / f"{dataset}-floor"),
                           **common))
            for tool in args.tools:
                launch(RunSpec(tool=tool, kind="frozen", trials=args.frozen_trials,
                               max_epochs=setup.head_epochs,
                               workdir=str(work / f"{dataset}-frozen-{tool}"), **common))
    total_min = (time.monotonic() - started) / 60

    lines, _ = summarise(runs, budget_s=budget_s)
    command = "python -m benchmarks.peers " + " ".join(
        sys.argv[1:] if argv is None else argv)
    header = [
        "## Figures", "",
        f"Command: `{command.strip()}` (whole run: {total_min:.0f} min)",
        f"Machine: {machine()}, Python "
        f"{platform.python_version()}; {_versions()}.",
        f"Budget per tool, dataset and seed: {args.budget_min:g} min; seeds "
        f"{', '.join(map(str, args.seeds))} (each seed is also the split's); backbones "
        f"{setup.backbones} (frozen-only space: {frozen_setup.backbones}), weights "
        f"{setup.weights}; split {1 - VAL_FRACTION - TEST_FRACTION:.0%} train / "
        f"{VAL_FRACTION:.0%} val / {TEST_FRACTION:.0%} held-out test. Cells: mean over seeds "
        "(min-max).", ""]
    results_path.parent.mkdir(parents=True, exist_ok=True)
    write_results(results_path, header + lines)
    raw = results_path.with_suffix(".json")
    raw.write_text(json.dumps({"command": command.strip(), "header": header, "runs": runs},
                              indent=1))
    print("\n".join(lines))
    print(f"wrote {results_path} and {raw}")
    return 0


def _versions() -> str:
    import importlib.metadata as md

    names = ("tensorflow", "keras", "keras-tuner", "optuna", "optuna-integration")
    return ", ".join(f"{n} {md.version(n)}" for n in names)


if __name__ == "__main__":
    sys.exit(main())
