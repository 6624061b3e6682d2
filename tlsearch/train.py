"""The trial engine: staged fine-tuning on a cached frozen prefix.

`run_trial` trains one `Strategy` and returns a `TrialResult`. It knows nothing of
Optuna: a `Reporter` (report a value at a step, ask whether to stop) lets an Optuna
trial, a KerasTuner trial or nothing at all sit behind it.

The strategy's phases (`tlsearch.plan`: the head warm-up, then the top blocks at the
lower backbone learning rate while the head keeps its own) run as one epoch loop;
optimizers, losses and the LR schedule are the recipes table's (`tlsearch.recipes`).
Epochs are counted across phases as one global step, which is what the pruner sees;
after each, the validation score goes to a `BestTracker` (best epoch, patience,
plateau), a `Checkpoint` and the reporter. When the strategy's prefix is cacheable, its
activations come from the prefix cache (`tlsearch.features`), computed once per
(backbone, weights, size, cut, data, view), and every epoch trains only the suffix
and head on them.
"""

from __future__ import annotations

import gc
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlsearch.backbones import OUTPUT_CUT
from tlsearch.batches import map_batches
from tlsearch.checkpoint import Checkpoint, load_checkpoint
from tlsearch.features import frozen_features
from tlsearch.latency import model_latency_ms
from tlsearch.metrics import compute_metrics, epoch_scores
from tlsearch.plan import Phase, class_weights, epoch_order, plan_phases
from tlsearch.recipes import lr_factor, make_loss
from tlsearch.steps import Step, pooled, trace_inference, trace_train_step
from tlsearch.strategy import Strategy
from tlsearch.tracker import BestTracker
from tlsearch.trial import (  # the engine's interface, re-exported
    NullReporter,
    Replay,
    Reporter,
    TrialFailed,
    TrialPruned,
    TrialResult,
)
from tlsearch.trial_data import TrialData

__all__ = [
    "NullReporter",
    "Replay",
    "Reporter",
    "TrialFailed",
    "TrialPruned",
    "TrialResult",
    "run_trial",
]

#: Augmented views cached per augmentation level; each epoch samples one.
AUGMENTED_VIEWS = 3


# -- the engine ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _EpochAt:
    """Where an epoch stands in the trial's plan."""

    step: int  # the global step: epochs counted across phases, from 1
    phase_index: int
    phase: Phase
    index: int  # the epoch within its phase, from 0
    final_phase: bool
    last_step: int  # the plan's last global step


class _Engine:
    """One trial's mutable state; `run_trial` is its only user."""

    def __init__(self, strategy: Strategy, data: TrialData, reporter: Reporter, *,
                 checkpoint_dir: Path | None, metric: str, feature_cache: Any,
                 nan_at_step: int | None, reuse_backbone: bool,
                 replay: Replay | None = None) -> None:
        import keras

        from tlsearch.model import build_transfer_model

        self.strategy = strategy
        self.reuse = reuse_backbone  # pooled backbone, head and traced steps
        self.data = data
        self.reporter = reporter
        self.checkpoint_dir = checkpoint_dir
        self.metric = metric
        self.nan_at_step = nan_at_step
        self.replay = replay
        self.timings: dict[str, float] = {"decode": 0.0, "prefix": 0.0, "train": 0.0,
                                          "eval": 0.0}
        self.cache_counts = {"hits": 0, "misses": 0}
        self.notes: list[str] = []
        if not reuse_backbone:
            # A fresh graph per trial: release the last trial's now. With a pooled
            # backbone the pool owns the big graph; the last trial's head and optimizers
            # are small and left to the collector's own schedule (a full collection
            # here costs a third of a second, a third of a warm head-only trial; the
            # engine benchmark checks that memory stays flat over 50 trials).
            keras.backend.clear_session()
            gc.collect()
        self.tm = build_transfer_model(strategy, len(data.classes),
                                       reuse_backbone=reuse_backbone)
        self.cached = self.tm.cacheable
        if not self.cached and self.tm.prefix is not None:
            self.notes.append("prefix not cacheable: BatchNorm 'adapt' reaches below the cut; "
                              "the full network ran every epoch")
        # Without a cacheable prefix (the whole backbone fine-tunes), the head warm-up
        # still sees a frozen backbone in inference mode: it trains on the cached backbone
        # outputs (the activations head-only trials use) instead of running the network.
        self.warmup_on_outputs = (not self.cached and strategy.bn_mode != "adapt"
                                  and strategy.head_epochs > 0
                                  and strategy.head_init != "probe")
        if self.warmup_on_outputs:
            self.notes.append("head warm-up trained on cached backbone outputs")
        self.n_classes = len(data.classes)
        self.y_train = data.labels("train")
        self.y_train_onehot = np.eye(self.n_classes, dtype=np.float32)[self.y_train]
        self.y_val = data.labels("val")
        # `focal` is the alpha-balanced focal loss (Lin et al.): focusing on hard
        # examples alone does not fix imbalance, the balanced class weights do.
        self.class_weights = (class_weights(self.y_train, self.n_classes)
                              if strategy.imbalance in ("class_weight", "focal") else None)
        self.loss_fn = make_loss(strategy)
        self.feature_cache = feature_cache
        self.history: list[dict[str, Any]] = []
        self.weights = _TrialWeights(self.tm)
        self.tracker = BestTracker(self.weights, patience=strategy.early_stopping_patience,
                                   plateau=strategy.schedule == "plateau")
        self.head_solve: dict[str, Any] | None = None
        self._eval_fns: dict[str, Any] = {}
        # The last phase's last `epoch_soup` epochs (score, step, weights), for the soup.
        self.snapshots: deque[tuple[float, int, list[np.ndarray]]] = deque(
            maxlen=strategy.epoch_soup or None)
        self.final_mode: str | None = None

    # -- inputs ---------------------------------------------------------------------

    def prepare_inputs(self) -> None:
        size = self.strategy.image_size
        t0 = time.perf_counter()
        self.train_images = self.data.images("train", size)
        self.val_images = self.data.images("val", size)
        self.timings["decode"] = time.perf_counter() - t0
        self.inputs: dict[str, tuple[list[np.ndarray], np.ndarray]] = {}
        t0 = time.perf_counter()
        if self.cached:
            self.inputs["prefix"] = self._cached_inputs(self.tm.feature_extractor(), None)
        if self.warmup_on_outputs:
            self.inputs["outputs"] = self._cached_inputs(self.tm.output_extractor(), OUTPUT_CUT)
        self.timings["prefix"] = time.perf_counter() - t0

    def _cached_inputs(self, extractor: Any, cut: str | None) -> tuple[list[np.ndarray],
                                                                       np.ndarray]:
        """(training views, validation activations) of one frozen part of the network."""
        # Validation activations are kept in float32: the trial's final predictions are
        # made from them, and must equal what the exported model predicts on the images.
        val = self._features(extractor, "val", "clean", exact=True, cut=cut)
        if self.strategy.augmentation == "none":
            return [self._features(extractor, "train", "clean", cut=cut)], val
        views = [self._features(extractor, "train", f"{self.strategy.augmentation}:{view}",
                                cut=cut) for view in range(AUGMENTED_VIEWS)]
        return views, val

    @property
    def val_features(self) -> np.ndarray:
        return self.inputs["prefix"][1]

    def _features(self, extractor: Any, part: str, view: str, *, exact: bool = False,
                  cut: str | None = None) -> np.ndarray:
        array, hit = frozen_features(self.tm, self.data, self.feature_cache, part, view,
                                     exact=exact, extractor=extractor, cut=cut)
        self.cache_counts["hits" if hit else "misses"] += 1
        return array

    def _mode(self, phase_blocks: int) -> str:
        """What a phase trains on: cached prefix activations, cached backbone outputs
        (head warm-up of a whole-backbone fine-tune) or the images themselves."""
        if self.cached:
            return "prefix"
        if self.warmup_on_outputs and phase_blocks == 0:
            return "outputs"
        return "images"

    # -- training ---------------------------------------------------------------------

    def _train_inputs(self, step: int, mode: str) -> np.ndarray:
        if mode == "images":
            return self.train_images
        views = self.inputs[mode][0]
        rng = np.random.default_rng([self.strategy.seed, step, 7])
        return views[int(rng.integers(len(views)))]

    def _step(self, mode: str, blocks: int) -> Any:
        """The phase's train step: traced now, or the pooled one with the same graph
        (`tlsearch.steps`), its optimizers zeroed and this trial's dropout rate set."""
        s, tm = self.strategy, self.tm
        # What the graph depends on besides the objects it closes over (the owners): the
        # trainable set (blocks; BatchNorm mode where backbone layers run), the loss and
        # the optimizer's fixed settings. The uncached path has per-trial augmentation.
        bn = s.bn_mode if mode == "prefix" and tm.suffix is not None else None
        key = None if mode == "images" or not self.reuse else (
            "train", mode, blocks, bn, s.imbalance == "focal", s.label_smoothing,
            s.optimizer, s.weight_decay, self.n_classes)
        step = pooled(key, (tm.head, tm.suffix, tm.backbone),
                      lambda: trace_train_step(tm, s, self.loss_fn, mode, self.n_classes))
        step.reset(s.head_dropout)
        return step

    def predict_val(self, mode: str) -> np.ndarray:
        t0 = time.perf_counter()
        if mode == "outputs":  # the backbone is frozen: its outputs, then the head
            # A small head runs eagerly faster than a trace of it would cost.
            inputs = self.inputs["outputs"][1]
            forward = lambda batch: self.tm.head(batch, training=False)  # noqa: E731
            fresh = False
        else:
            inputs = self.val_features if mode == "prefix" else self.val_images
            traced: list[bool] = []
            forward = self._eval_fn(mode, traced)
            fresh = bool(traced)
        traces: list[float] = []

        def first(batch: np.ndarray) -> Any:
            out, spent = self._first_call(forward, batch)
            traces.append(spent)
            return out

        probs = map_batches(forward, inputs, first=first if fresh else None)
        self.timings["eval"] += time.perf_counter() - t0 - sum(traces)
        return probs.astype(np.float64)

    def _first_call(self, fn: Any, *args: Any) -> tuple[Any, float]:
        """`fn(*args)` timed as `trace`: a traced function's first call traces it (or,
        pooled, just runs). Returns (its result, the seconds)."""
        t0 = time.perf_counter()
        out = fn(*args)
        spent = time.perf_counter() - t0
        self.timings["trace"] = self.timings.get("trace", 0.0) + spent
        return out, spent

    def _eval_fn(self, mode: str, traced: list[bool]) -> Any:
        """The inference pass through the trained part, traced once per trial (or taken
        from `tlsearch.steps`' pool with the same objects). Appends to `traced` if traced."""

        def build() -> Any:
            traced.append(True)
            return trace_inference(self.tm.features_model() if mode == "prefix"
                                   else self.tm.deployable())

        if mode not in self._eval_fns:
            tm = self.tm
            key = None if mode == "images" or not self.reuse else ("eval", mode,
                                                                    self.n_classes)
            self._eval_fns[mode] = pooled(key, (tm.head, tm.suffix, tm.backbone), build)
        return self._eval_fns[mode]

    # -- the epoch loop ---------------------------------------------------------------

    def run(self, resume: Checkpoint | None) -> TrialResult:
        """Train every phase's epochs (those after the checkpoint's, if resumed)."""
        phases = plan_phases(self.strategy, len(self.tm.blocks))
        global_step, start_phase, start_epoch = 0, 0, 0
        if resume:
            self.history = list(resume.history)
            global_step = resume.global_step
            start_phase, start_epoch = resume.phase_index, resume.epoch_in_phase + 1
            self.tracker.resume(plateau_factor=resume.plateau_factor, best=resume.best_value,
                                best_step=resume.best_step, best_weights=resume.best_weights)
        resumed_from = global_step
        last_step = sum(phase.epochs for phase in phases)
        for phase_index in range(start_phase, len(phases)):
            if self._replayed(global_step):
                break
            phase = phases[phase_index]
            first_epoch = start_epoch if phase_index == start_phase else 0
            if first_epoch >= phase.epochs:
                continue
            self.tm.set_unfrozen(phase.blocks)
            mode = self._mode(phase.blocks)
            step = self._step(mode, phase.blocks)
            if resume and phase_index == start_phase and first_epoch > 0:
                resume.restore_optimizers(step.opt_backbone, step.opt_head)
            self.tracker.on_phase_begin()
            for epoch in range(first_epoch, phase.epochs):
                if self._replayed(global_step):
                    break
                global_step += 1
                at = _EpochAt(step=global_step, phase_index=phase_index, phase=phase,
                              index=epoch, final_phase=phase_index == len(phases) - 1,
                              last_step=last_step)
                if not self._epoch(at, step, mode, first=epoch == first_epoch):
                    break
        return self._finish(resumed_from)

    def _replayed(self, global_step: int) -> bool:
        """Whether a replay has trained all the steps it repeats."""
        return self.replay is not None and global_step >= self.replay.steps

    def _epoch(self, at: _EpochAt, step: Step, mode: str, *, first: bool) -> bool:
        """Train one epoch, then (unless replaying) evaluate, track, checkpoint and report
        it. Returns whether its phase goes on.

        Raises:
            TrialFailed: the training loss is not finite.
            TrialPruned: the reporter asked to stop.
        """
        s = self.strategy
        factor = (self.replay.lr_factors[at.step - 1] if self.replay is not None
                  else lr_factor(s.schedule, at.index, at.phase.epochs, s.warmup_epochs,
                                 self.tracker.plateau_factor))
        step.opt_head.learning_rate = s.head_lr * factor
        step.opt_backbone.learning_rate = s.backbone_lr * factor
        t0 = time.perf_counter()
        train_loss, train_accuracy, trace_s = self._train_epoch(step, mode, at.step, first=first)
        if self.nan_at_step is not None and at.step >= self.nan_at_step:
            train_loss = float("nan")  # test hook: behave exactly as a diverged run
        self.timings["train"] += time.perf_counter() - t0 - trace_s
        if not math.isfinite(train_loss):
            raise TrialFailed("nan_loss", f"training loss became {train_loss} at "
                                          f"step {at.step} ({at.phase.name})")
        if s.bn_mode == "adapt":  # statistics of these weights, not of a blend
            t0 = time.perf_counter()
            self.tm.reestimate_batchnorm(self.train_images)
            self.timings["bn_reestimate"] = (self.timings.get("bn_reestimate", 0.0)
                                             + time.perf_counter() - t0)
        record = {"step": at.step, "phase": at.phase.name, "phase_index": at.phase_index,
                  "epoch": at.index, "unfrozen_blocks": at.phase.blocks,
                  "train_loss": train_loss, "train_accuracy": train_accuracy}
        rates = {"lr_head": s.head_lr * factor,
                 "lr_backbone": s.backbone_lr * factor if step.backbone_vars else 0.0}
        if self.replay is not None:  # nothing to select, so nothing to evaluate
            if at.step in self.replay.soup_steps:
                self.snapshots.append((math.nan, at.step, self.weights.get_weights()))
            self.history.append({**record, **rates, "seconds": time.perf_counter() - t0})
            return True
        probs = self.predict_val(mode)
        metrics = epoch_scores(self.y_val, probs, self.metric)
        value = metrics[self.metric]
        self.history.append({
            **record, "val_loss": metrics["log_loss"], "val_accuracy": metrics["accuracy"],
            "val_balanced_accuracy": metrics["balanced_accuracy"], "val_objective": value,
            **rates, "seconds": time.perf_counter() - t0,
        })
        self.tracker.on_epoch_end(at.step, value)
        if s.epoch_soup > 1 and at.final_phase:
            self.snapshots.append((value, at.step, self.weights.get_weights()))
            self.final_mode = mode
        self._checkpoint(at.step, at.phase_index, at.index, step.opt_backbone, step.opt_head)
        self.reporter.report(value, at.step)
        # After its last epoch a trial is complete: nothing is left to prune.
        if at.step < at.last_step and self.reporter.should_stop():
            raise TrialPruned(f"pruned at step {at.step}")
        if self.tracker.stop_phase:
            self.notes.append(f"early stop in phase {at.phase.name} at step {at.step}")
            return False
        return True

    def _train_epoch(self, step: Step, mode: str, global_step: int, *,
                     first: bool) -> tuple[float, float, float]:
        """One pass over the training images in the epoch's order, in batches. Returns
        (mean loss, accuracy, seconds of the phase's first call of its step, or 0)."""
        import tensorflow as tf

        s = self.strategy
        inputs = self._train_inputs(global_step, mode)
        order = epoch_order(self.y_train, s, global_step)
        total_loss, total_correct, seen, trace_s = 0.0, 0.0, 0, 0.0
        for start in range(0, len(order), s.batch_size):
            idx = np.sort(order[start:start + s.batch_size])
            x = np.asarray(inputs[idx], dtype=np.float32)
            y = self.y_train_onehot[idx]
            w = (self.class_weights[self.y_train[idx]] if self.class_weights is not None
                 else np.ones(len(idx), dtype=np.float32))
            batch = (tf.constant(x), tf.constant(y), tf.constant(w))
            if first and start == 0:
                (loss, correct), trace_s = self._first_call(step.fn, *batch)
            else:
                loss, correct = step.fn(*batch)
            total_loss += float(loss) * len(idx)
            total_correct += float(correct)
            seen += len(idx)
        return total_loss / max(seen, 1), total_correct / max(seen, 1), trace_s

    # -- the trial's end ---------------------------------------------------------------

    def _finish(self, resumed_from: int) -> TrialResult:
        extra: dict[str, Any] = {"head_solve": self.head_solve} if self.head_solve else {}
        if self.replay is None:
            if len(self.snapshots) > 1:
                extra["epoch_soup"] = self._epoch_soup()
            # The trial ends with its best epoch's weights (or its epoch soup's), so the
            # recorded validation predictions are exactly what an exported model predicts.
            self.tracker.restore_best_weights()
        elif self.snapshots:  # the trial's epoch soup, averaged at the same steps
            from tlsearch.soup import average_weights

            self.weights.set_weights(average_weights([w for _, _, w in self.snapshots]))
            if self.strategy.bn_mode == "adapt":
                self.tm.reestimate_batchnorm(self.train_images)
        # Final validation predictions are what `predict` will give: the deployable
        # model on decoded images, or (same graph, same numbers) its trained part on the
        # float32 cached prefix activations of those images, without the prefix pass.
        deploy = self.tm.deployable()
        if self.cached:
            probs = _predict_images(self.tm.features_model(), self.val_features)
        else:
            probs = _predict_images(deploy, self.val_images)
        metrics = compute_metrics(self.y_val, probs, self.data.classes)
        metrics["best_step"] = (self.replay.steps if self.replay is not None
                                else self.tracker.best_step)
        backbone_vars, head_vars = self.tm.trainable_variables
        params = {
            "total": int(deploy.count_params()),
            "trainable_max": int(sum(int(np.prod(v.shape)) for v in backbone_vars + head_vars)),
        }
        return TrialResult(
            strategy=self.strategy, state="complete", objective=float(metrics[self.metric]),
            metric_name=self.metric, metrics=metrics, history=tuple(self.history),
            timings=dict(self.timings), params=params,
            latency_ms=model_latency_ms(deploy, self.strategy),
            cached=self.cached, cache=dict(self.cache_counts), val_probabilities=probs,
            resumed_from_step=resumed_from, notes=tuple(self.notes), model=deploy,
            extra=extra, backbone_digest=self._untouched_backbone(),
        )

    def _untouched_backbone(self) -> str | None:
        """The pooled backbone's digest if its weights and statistics are as built (the
        trial trained only its head: checked, not assumed), else None."""
        from tlsearch.kept import weights_digest

        digest = self.tm.pristine_digest
        if (digest is None or self.tm.depth != 0 or self.strategy.bn_mode == "adapt"
                or weights_digest(self.tm.backbone.get_weights()) != digest):
            return None
        return digest

    def _epoch_soup(self) -> dict[str, Any]:
        """Greedy soup of the last phase's last epochs (Wortsman et al.'s recipe on one
        trajectory, as in SWA): best epoch first, each other added only if the average
        scores higher on validation; the trial keeps it only if it beats its best epoch
        (which may be an earlier phase's). BatchNorm statistics under `adapt` are
        re-estimated for each average, as every epoch's were."""
        from tlsearch.soup import Soup, greedy_average

        def score(weights: list[np.ndarray], _: tuple[int, ...]) -> float:
            self.weights.set_weights(weights)
            if self.strategy.bn_mode == "adapt":
                self.tm.reestimate_batchnorm(self.train_images)
            probs = self.predict_val(self.final_mode)
            return epoch_scores(self.y_val, probs, self.metric)[self.metric]

        ordered = sorted(self.snapshots, key=lambda snap: (-snap[0], snap[1]))
        (first_value, first_step, first_weights), rest = ordered[0], ordered[1:]
        steps, weights, value, tried = greedy_average(
            (first_step, first_weights, first_value), ((n, w) for _, n, w in rest), score)
        before = self.tracker.best
        adopted = len(steps) > 1 and value > before
        if adopted:
            self.weights.set_weights(weights)
            if self.strategy.bn_mode == "adapt":
                self.tm.reestimate_batchnorm(self.train_images)
            # The last step averaged in is the epoch count a retrain must reach.
            self.tracker.keep(value, max(steps))
        soup = Soup(ingredients=steps, val_score=value, first_val_score=first_value,
                    tried=tried, recipe="epochs")
        return {**soup.to_dict(), "adopted": adopted, "best_epoch_score": before}

    # -- the head's starting point -----------------------------------------------------

    def _pooled(self, part: str) -> np.ndarray:
        """Pooled frozen backbone outputs of the clean training (or validation) images."""
        if self.cached and self.tm.suffix is None:  # head-only: the prefix is the output
            maps = self.inputs["prefix"][0][0] if part == "train" else self.val_features
        elif self.warmup_on_outputs:
            maps = self.inputs["outputs"][0][0] if part == "train" else \
                self.inputs["outputs"][1]
        else:  # looked up outside the trial's own cache counts: shared by every trial
            maps, _ = frozen_features(self.tm, self.data, self.feature_cache, part, "clean",
                                      exact=part == "val", extractor=self.tm.output_extractor(),
                                      cut=OUTPUT_CUT)
        return np.asarray(maps, dtype=np.float32).mean(axis=(1, 2))

    def init_head(self) -> None:
        """Start the head from the solve of `tlsearch.head` (`head_init: solve` or `probe`)."""
        from tlsearch.head import DEFAULT_C, solve_linear_head

        s = self.strategy
        if s.head_init == "random":
            return
        t0 = time.perf_counter()
        c_grid = (None if s.head_init == "solve" else (DEFAULT_C,)) if self.replay is None \
            else (self.replay.head_C,)
        solved = solve_linear_head(
            self._pooled("train"), self.y_train, self._pooled("val"), self.y_val,
            self.n_classes, balanced=s.imbalance != "none", metric=self.metric,
            c_grid=c_grid)
        self.tm.head.get_layer("head_norm").set_weights([solved.mean, solved.variance])
        if not s.head_hidden_units:
            self.tm.head.get_layer("head_logits").set_weights([solved.kernel, solved.bias])
        self.timings["head_solve"] = time.perf_counter() - t0
        self.head_solve = {"C": solved.C, "val_score": solved.val_score,
                           "linear": not s.head_hidden_units}
        if not s.head_hidden_units and self.replay is None:
            # The solve itself is a candidate: SGD epochs replace it only if they win.
            probs = self.predict_val(self._mode(0))
            value = epoch_scores(self.y_val, probs, self.metric)[self.metric]
            self.tracker.keep(value, 0)

    # -- checkpoints --------------------------------------------------------------------

    def load_weights(self, checkpoint: Checkpoint) -> bool:
        """Continue from the checkpoint's weights if they are this trial's variables
        (same count); returns whether they were loaded."""
        if len(checkpoint.weights) != len(self.weights.variables()):
            return False
        self.weights.set_weights(checkpoint.weights)
        return True

    def _checkpoint(self, step: int, phase_index: int, epoch: int, opt_b: Any, opt_h: Any) -> None:
        if self.checkpoint_dir is None:
            return
        Checkpoint(
            strategy=self.strategy.to_dict(), global_step=step, phase_index=phase_index,
            epoch_in_phase=epoch, history=tuple(self.history),
            weights=tuple(self.weights.get_weights()),
            opt_backbone=tuple(_numpy(opt_b.variables)), opt_head=tuple(_numpy(opt_h.variables)),
            plateau_factor=self.tracker.plateau_factor, best_value=self.tracker.best,
            best_step=self.tracker.best_step,
            best_weights=None if self.tracker.best_weights is None
            else tuple(self.tracker.best_weights),
        ).save(self.checkpoint_dir)


class _TrialWeights:
    """The variables a trial can change (the frozen prefix never does), read and set as
    Keras's `get_weights`/`set_weights` do a model's."""

    def __init__(self, tm: Any) -> None:
        self.tm = tm

    def variables(self) -> list[Any]:
        tm = self.tm
        if tm.prefix is None or tm.strategy.bn_mode == "adapt":
            variables = list(tm.backbone.variables)
        elif tm.suffix is None:
            variables = []
        else:
            variables = list(tm.suffix.variables)
        variables += list(tm.head.variables)
        for layer in tm.augment:
            variables += list(layer.variables)  # their seed-generator state
        return variables

    def get_weights(self) -> list[np.ndarray]:
        return _numpy(self.variables())

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        for variable, value in zip(self.variables(), weights, strict=True):
            variable.assign(value)


def _numpy(variables: list[Any]) -> list[np.ndarray]:
    """Copies of the variables' current values."""
    return [np.array(v.numpy()) for v in variables]


def _predict_images(model: Any, images: np.ndarray) -> np.ndarray:
    """Probabilities of a model over its inputs (images or activations), inference mode."""
    return map_batches(lambda x: model(x, training=False), images).astype(np.float64)


def run_trial(strategy: Strategy, data: TrialData, reporter: Reporter | None = None, *,
              resume_from: Path | None = None, checkpoint_dir: Path | None = None,
              metric: str = "balanced_accuracy", feature_cache: Any = None,
              nan_at_step: int | None = None, reuse_backbone: bool = False,
              replay: Replay | None = None) -> TrialResult:
    """Train one strategy and return its result; never raises for a failed trial.

    Args:
        reporter: receives the objective after every epoch (one global step across
            phases) and may stop the trial.
        resume_from: a checkpoint folder from an interrupted run of the same strategy;
            training continues at the epoch after the last completed one.
        checkpoint_dir: where to write a checkpoint after every epoch.
        feature_cache: a `FeatureCache`; defaults to one under `data.cache_dir`.
        nan_at_step: test hook that makes the loss non-finite from that step on.
        replay: train a finished trial's recorded schedule and keep the final weights,
            selecting nothing on the validation images (they may be training images).
        reuse_backbone: build the backbone once per process and reuse it (original
            weights restored) in later trials: saves seconds per trial. The result's
            `model` then shares the backbone and is only valid until the next trial, so
            use it (save it) before starting another, as a search worker does.

    Raises:
        TrialPruned: the reporter asked to stop.
    """
    from tlsearch.backbones import WeightsError
    from tlsearch.features import FeatureCache

    reporter = reporter or NullReporter()
    feature_cache = feature_cache or FeatureCache(data.cache_dir)
    resume = None
    if resume_from is not None:
        resume = load_checkpoint(resume_from)
        if resume is not None and resume.strategy != strategy.to_dict():
            resume = None  # a checkpoint of another strategy is never applied
    started = time.perf_counter()
    engine = None
    try:
        engine = _Engine(strategy, data, reporter, checkpoint_dir=checkpoint_dir, metric=metric,
                         feature_cache=feature_cache, nan_at_step=nan_at_step,
                         reuse_backbone=reuse_backbone, replay=replay)
        engine.prepare_inputs()
        engine.init_head()
        if resume is not None and not engine.load_weights(resume):
            resume = None
        result = engine.run(resume)
    except TrialPruned as exc:
        exc.timings = dict(engine.timings if engine else {},
                           total=time.perf_counter() - started)
        raise
    except TrialFailed as exc:
        result = _failed(strategy, metric, exc.reason, exc.detail, engine)
    except WeightsError:
        raise
    result.timings["total"] = time.perf_counter() - started
    return result


def _failed(strategy: Strategy, metric: str, reason: str, detail: str,
            engine: _Engine | None) -> TrialResult:
    return TrialResult(
        strategy=strategy, state="failed", objective=None, metric_name=metric, metrics={},
        history=tuple(engine.history) if engine else (), timings=dict(engine.timings) if engine
        else {}, params={}, latency_ms=None, cached=bool(engine and engine.cached),
        cache=dict(engine.cache_counts) if engine else {}, failure_reason=reason,
        failure_detail=detail, notes=tuple(engine.notes) if engine else (),
    )
