"""The trial engine on the tiny backbone: phases, cache, resume, NaN, imbalance."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import tiny_strategy, write_colour_dataset
from tlsearch.features import FeatureCache
from tlsearch.metrics import compute_metrics
from tlsearch.train import TrialPruned, run_trial
from tlsearch.trial_data import TrialData

_strategy = tiny_strategy


class Recorder:
    def __init__(self, stop_at: int | None = None, crash_at: int | None = None):
        self.steps: list[int] = []
        self.values: list[float] = []
        self.stop_at, self.crash_at = stop_at, crash_at

    def report(self, value, step):
        self.steps.append(step)
        self.values.append(value)
        if self.crash_at is not None and step == self.crash_at:
            raise KeyboardInterrupt("simulated kill after the checkpoint")

    def should_stop(self):
        return self.stop_at is not None and self.steps[-1] >= self.stop_at


def test_phases_and_one_global_step(trial_data):
    rec = Recorder()
    result = run_trial(_strategy(), trial_data, rec)
    assert result.state == "complete"
    assert rec.steps == [1, 2, 3, 4]
    assert [h["phase"] for h in result.history] == ["head", "head", "finetune", "finetune"]
    assert result.history[0]["lr_backbone"] == 0.0 and result.history[-1]["lr_backbone"] > 0
    assert result.objective == pytest.approx(result.metrics["balanced_accuracy"])
    assert result.val_probabilities.shape == (len(trial_data.val_paths), 3)
    assert result.latency_ms > 0 and result.params["total"] > 0
    assert result.objective > 0.6, "colour classes must be learnable"


def test_gradual_unfreezing_adds_a_block_per_phase(trial_data):
    result = run_trial(_strategy(unfreeze_blocks=2, gradual=True, finetune_epochs=2),
                       trial_data)
    assert [h["unfrozen_blocks"] for h in result.history] == [0, 0, 1, 2]


def test_pruning_stops_the_trial(trial_data):
    with pytest.raises(TrialPruned):
        run_trial(_strategy(), trial_data, Recorder(stop_at=2))


def test_second_trial_hits_the_cache_and_skips_the_prefix(trial_data):
    cache = FeatureCache(trial_data.cache_dir)
    first = run_trial(_strategy(), trial_data, feature_cache=cache)
    second = run_trial(_strategy(head_lr=1e-2), trial_data, feature_cache=cache)
    assert first.cache == {"hits": 0, "misses": 2}
    assert second.cache == {"hits": 2, "misses": 0}
    assert first.cached and second.cached


def test_corrupt_cache_entry_is_recomputed(trial_data):
    cache = FeatureCache(trial_data.cache_dir)
    clean = run_trial(_strategy(), trial_data, feature_cache=cache)
    for entry in cache.root.glob("*.npy"):
        data = bytearray(entry.read_bytes())
        data[-5] ^= 0xFF
        entry.write_bytes(bytes(data))
    again = run_trial(_strategy(), trial_data, feature_cache=cache)
    assert again.cache == {"hits": 0, "misses": 2}
    # the prefix's two entries and the backbone outputs' two the head solve reads
    assert cache.stats.recomputed_corrupt == 4
    assert again.objective == pytest.approx(clean.objective)


def test_cached_and_uncached_agree(trial_data, monkeypatch):
    """Same seed, same model: the cache changes speed, not the result."""
    from tlsearch import model as model_mod

    cached = run_trial(_strategy(), trial_data)
    monkeypatch.setattr(model_mod.TransferModel, "cacheable", property(lambda self: False))
    uncached = run_trial(_strategy(), trial_data)
    assert cached.cached and not uncached.cached
    n_val = len(trial_data.val_paths)
    assert abs(cached.objective - uncached.objective) <= 1.5 / n_val * 3
    assert np.abs(cached.val_probabilities - uncached.val_probabilities).max() < 0.05


def test_adapt_runs_uncached_and_says_so(trial_data):
    result = run_trial(_strategy(bn_mode="adapt", head_epochs=1, finetune_epochs=1), trial_data)
    assert result.state == "complete" and not result.cached
    assert any("not cacheable" in note for note in result.notes)


def test_resume_after_kill_repeats_no_epoch(trial_data, tmp_path):
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        run_trial(_strategy(), trial_data, Recorder(crash_at=3), checkpoint_dir=ckpt)
    rec = Recorder()
    result = run_trial(_strategy(), trial_data, rec, resume_from=ckpt, checkpoint_dir=ckpt)
    assert rec.steps == [4]
    assert [h["step"] for h in result.history] == [1, 2, 3, 4]
    assert result.resumed_from_step == 3


def test_checkpoint_of_other_strategy_is_ignored(trial_data, tmp_path):
    ckpt = tmp_path / "ckpt"
    run_trial(_strategy(), trial_data, checkpoint_dir=ckpt)
    rec = Recorder()
    run_trial(_strategy(head_lr=1e-3), trial_data, rec, resume_from=ckpt)
    assert rec.steps == [1, 2, 3, 4]


def test_nan_loss_fails_the_trial(trial_data):
    result = run_trial(_strategy(), trial_data, nan_at_step=2)
    assert result.state == "failed" and result.failure_reason == "nan_loss"
    assert result.objective is None


def test_metrics_from_sklearn():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    m = compute_metrics(np.array([0, 1, 2, 2]), probs, ["a", "b", "c"])
    assert m["accuracy"] == 0.75
    assert m["balanced_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["confusion_matrix"][2] == [1, 0, 1]
    assert m["per_class"]["c"]["recall"] == 0.5


@pytest.fixture
def imbalanced_data(tmp_path):
    from tlsearch.data import make_split, scan

    root = write_colour_dataset(tmp_path / "imb", {"a": 60, "b": 60, "c": 60, "rare": 10},
                                seed=3)
    split = make_split(scan(root), val_fraction=0.4, seed=0)
    return TrialData.from_split(root, split, tmp_path / "cache")


def test_each_imbalance_remedy_changes_minority_recall(imbalanced_data):
    recalls = {}
    for remedy in ("none", "class_weight", "oversample", "focal"):
        # From a random head, so the remedy's effect on the SGD loss is what is measured
        # (a converged balanced solve would hide it).
        result = run_trial(_strategy(imbalance=remedy, unfreeze_blocks=-1, head_epochs=2,
                                     finetune_epochs=4, head_lr=2e-2, backbone_lr=1e-2,
                                     head_init="random"),
                           imbalanced_data)
        recalls[remedy] = result.metrics["per_class"]["rare"]["recall"]
    for remedy in ("class_weight", "oversample", "focal"):
        assert recalls[remedy] > recalls["none"], recalls


def test_reused_backbone_gives_the_same_trials(trial_data, tmp_path):
    """A pooled backbone is restored to its original weights: a fine-tuning trial in
    between changes nothing, and results equal those of a freshly built backbone."""
    from tlsearch.model import _POOL, clear_backbone_pool

    cache = FeatureCache(tmp_path / "fc")
    fine = _strategy(unfreeze_blocks=1, bn_mode="affine", finetune_epochs=2)
    head_only = _strategy(unfreeze_blocks=0, finetune_epochs=0, seed=3)
    fresh = [run_trial(s, trial_data, feature_cache=cache) for s in (fine, head_only)]
    clear_backbone_pool()
    pooled = [run_trial(s, trial_data, feature_cache=cache, reuse_backbone=True)
              for s in (fine, head_only, fine)]
    assert len(_POOL) == 2  # seeds 1 and 3 give different random inits: two entries
    np.testing.assert_allclose(pooled[0].val_probabilities, fresh[0].val_probabilities,
                               atol=1e-6)
    np.testing.assert_allclose(pooled[1].val_probabilities, fresh[1].val_probabilities,
                               atol=1e-6)
    np.testing.assert_allclose(pooled[2].val_probabilities, fresh[0].val_probabilities,
                               atol=1e-6)
    clear_backbone_pool()


def test_full_finetune_warms_the_head_up_on_cached_outputs(trial_data, tmp_path):
    """Unfreezing every block leaves no prefix to cache, but the head warm-up still sees
    a frozen backbone: it trains on the cached outputs, exactly as a head-only trial."""
    from tlsearch.strategy import ALL_BLOCKS

    cache = FeatureCache(tmp_path / "fc")
    head_only = _strategy(unfreeze_blocks=0, finetune_epochs=0, head_epochs=2)
    full = _strategy(unfreeze_blocks=ALL_BLOCKS, finetune_epochs=1, head_epochs=2)
    first = run_trial(head_only, trial_data, feature_cache=cache)
    result = run_trial(full, trial_data, feature_cache=cache)
    assert result.state == "complete" and not result.cached
    assert result.cache == {"hits": 2, "misses": 0}  # the head-only trial's entries
    warmup = [h["val_objective"] for h in result.history if h["phase"] == "head"]
    assert warmup == pytest.approx([h["val_objective"] for h in first.history])
    assert [h["train_loss"] for h in result.history[:2]] == pytest.approx(
        [h["train_loss"] for h in first.history], rel=1e-5)
    assert len(result.history) == 3 and result.history[-1]["phase"] == "finetune"
    adapt = run_trial(full.replace(bn_mode="adapt"), trial_data, feature_cache=cache)
    assert adapt.cache == {"hits": 0, "misses": 0}  # batch statistics: nothing cacheable


def test_tiny_activations_are_cached_without_loss(tmp_path):
    """float16 would flush 1e-12 activations (a random-init backbone's) to zero."""
    cache = FeatureCache(tmp_path / "fc")
    tiny = np.random.default_rng(0).normal(0, 1, (8, 4)).astype(np.float32) * 1e-12
    stored, hit = cache.get_or_compute("k" * 32, lambda: tiny, dtype=np.float16)
    assert not hit and stored.dtype == np.float32
    np.testing.assert_array_equal(stored, tiny)
    normal, _ = cache.get_or_compute("n" * 32, lambda: tiny * 1e12, dtype=np.float16)
    assert normal.dtype == np.float16


def test_latency_is_measured_with_every_op_on_the_cpu():
    import keras
    import tensorflow as tf

    from tlsearch.latency import cpu_inference_fn

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    fn = cpu_inference_fn(model)
    graph = fn.get_concrete_function(tf.TensorSpec((1, 8, 8, 3))).graph
    # Variable reads sit where the variables live (cloned onto the CPU where a GPU is).
    plumbing = {"Placeholder", "ReadVariableOp", "Identity", "NoOp"}
    compute = {op.type: op.device for op in graph.get_operations() if op.type not in plumbing}
    assert {"MatMul", "BiasAdd"} <= set(compute)
    assert all("CPU" in d for d in compute.values()), compute


def test_a_replay_selects_nothing_on_validation(trial_data):
    """`--retrain train+val` trains on validation images: nothing may be chosen on them."""
    import dataclasses

    from tlsearch.train import Replay

    strategy = _strategy(schedule="plateau", early_stopping_patience=1)
    trial = run_trial(strategy, trial_data)
    replay = Replay.of(trial.to_dict())
    assert replay.steps == trial.metrics["best_step"]
    assert replay.head_C == trial.extra["head_solve"]["C"]
    replay = dataclasses.replace(replay, steps=3, lr_factors=(1.0, 0.5, 0.25))
    # The same training with validation labels that disagree about everything: a run
    # that selected an epoch, a C or a learning-rate decay on them would differ.
    flipped = dataclasses.replace(
        trial_data, val_labels=tuple((y + 1) % 3 for y in trial_data.val_labels))
    runs = [run_trial(strategy, data, replay=replay) for data in (trial_data, flipped)]
    for run in runs:
        assert run.state == "complete" and len(run.history) == 3
        assert [h["lr_head"] for h in run.history] == pytest.approx(
            [strategy.head_lr * f for f in (1.0, 0.5, 0.25)])
        assert run.extra["head_solve"]["C"] == replay.head_C
    weights = [r.model.get_weights() for r in runs]
    assert all(np.array_equal(a, b) for a, b in zip(*weights, strict=True))


def test_adapt_statistics_describe_the_final_weights(trial_data):
    """Under `adapt`, the moving statistics a model is evaluated and exported with are
    those of its final weights on the training images, not a momentum-0.99 blend."""
    import keras

    from tlsearch.backbones import get_spec
    from tlsearch.model import preprocessing_layers

    # A random head, so that the kept weights are a trained epoch's (a solved head
    # starts as a candidate with the backbone's own statistics, step 0).
    strategy = _strategy(bn_mode="adapt", head_epochs=1, finetune_epochs=2, unfreeze_blocks=-1,
                         head_init="random")
    result = run_trial(strategy, trial_data)
    assert result.timings["bn_reestimate"] > 0 and result.metrics["best_step"] > 0
    backbone = next(layer for layer in result.model.layers if layer.name == "tiny_cnn")
    probe = keras.Model(backbone.input, backbone.get_layer("stem_conv").output)
    x = trial_data.images("train", 32).astype(np.float32)
    for layer in preprocessing_layers(get_spec("tiny_cnn").family):
        x = layer(x)
    first_bn_input = np.asarray(probe(x, training=False))
    expected_mean = first_bn_input.mean(axis=(0, 1, 2))
    got = np.asarray(backbone.get_layer("stem_bn").moving_mean)
    assert np.allclose(got, expected_mean, atol=1e-4 + 1e-3 * np.abs(expected_mean).max())
    # The recorded validation score is what the exported model scores.
    probs = np.asarray(result.model.predict(trial_data.images("val", 32).astype(np.float32),
                                            verbose=0))
    assert np.abs(probs - result.val_probabilities).max() < 1e-4


def test_epoch_soup_is_chosen_on_validation_and_is_what_the_model_predicts(trial_data):
    """The trial's epoch soup (issue #22) starts from its best last-phase epoch, never
    scores below the trial without it on validation, and its recorded predictions are
    the model's; a soup of one epoch is the trial itself."""
    strategy = _strategy(finetune_epochs=4, head_lr=1e-1, backbone_lr=3e-2, schedule="constant")
    plain = run_trial(strategy, trial_data)
    one = run_trial(strategy.replace(epoch_soup=1), trial_data)
    assert "epoch_soup" not in one.extra
    assert all(np.array_equal(a, b) for a, b in
               zip(plain.model.get_weights(), one.model.get_weights(), strict=True))
    souped = run_trial(strategy.replace(epoch_soup=3), trial_data)
    record = souped.extra["epoch_soup"]
    last_phase = [h for h in plain.history if h["phase"] == "finetune"][-3:]
    assert record["recipe"] == "epochs" and set(record["ingredients"]) <= {
        h["step"] for h in last_phase}
    best_last = max(last_phase, key=lambda h: h["val_objective"])
    assert record["ingredients"][0] == best_last["step"]
    assert record["first_val_score"] == pytest.approx(best_last["val_objective"])
    assert record["best_epoch_score"] == pytest.approx(plain.objective)
    assert souped.objective >= plain.objective - 1e-9
    assert record["adopted"] == (souped.objective > plain.objective)
    if record["adopted"]:
        assert souped.objective == pytest.approx(record["val_score"])
        assert souped.metrics["best_step"] == max(record["ingredients"])
    probs = np.asarray(souped.model.predict(trial_data.images("val", 32).astype(np.float32),
                                            verbose=0))
    assert np.abs(probs - souped.val_probabilities).max() < 1e-4


def test_a_replay_averages_the_recorded_epoch_soup(trial_data):
    """A retrain repeats the soup's steps with nothing chosen: its weights are the mean
    of the replay's own weights at those steps."""
    import dataclasses

    from tlsearch.soup import average_weights
    from tlsearch.train import Replay

    strategy = _strategy(finetune_epochs=2, epoch_soup=2)
    replay = Replay(steps=3, lr_factors=(1.0, 1.0, 1.0, 1.0), head_C=1.0)
    at = {n: run_trial(strategy, trial_data, replay=dataclasses.replace(replay, steps=n))
          for n in (2, 3)}
    souped = run_trial(strategy, trial_data, replay=dataclasses.replace(replay, soup_steps=(2, 3)))
    expected = average_weights([at[2].model.get_weights(), at[3].model.get_weights()])
    for got, want in zip(souped.model.get_weights(), expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    record = {"strategy": strategy.to_dict(), "metrics": {"best_step": 3},
              "history": [{"lr_head": strategy.head_lr}] * 4,
              "extra": {"head_solve": {"C": 1.0},
                        "epoch_soup": {"ingredients": [3, 2], "adopted": True}}}
    assert Replay.of(record).soup_steps == (3, 2)
    record["extra"]["epoch_soup"]["adopted"] = False
    assert Replay.of(record).soup_steps == ()


def test_an_adopted_epoch_soup_is_the_trials_model(trial_data, monkeypatch):
    """Where the soup wins on validation (forced here: the colour data saturate), the
    trial ends with the averaged weights, records their steps, and a retrain replays
    up to the last of them."""
    import tlsearch.soup
    from tlsearch.train import Replay

    real = tlsearch.soup.greedy_average

    def always_better(first, candidates, score):
        return real(first, candidates, lambda w, ids: score(w, ids) + 1.0)

    monkeypatch.setattr(tlsearch.soup, "greedy_average", always_better)
    strategy = _strategy(finetune_epochs=3, epoch_soup=2)
    plain = run_trial(strategy.replace(epoch_soup=0), trial_data)
    souped = run_trial(strategy, trial_data)
    record = souped.extra["epoch_soup"]
    assert record["adopted"] and sorted(record["ingredients"]) == [4, 5]
    assert souped.metrics["best_step"] == 5
    assert not all(np.array_equal(a, b) for a, b in
                   zip(plain.model.get_weights(), souped.model.get_weights(), strict=True))
    probs = np.asarray(souped.model.predict(trial_data.images("val", 32).astype(np.float32),
                                            verbose=0))
    assert np.abs(probs - souped.val_probabilities).max() < 1e-4
    assert Replay.of(souped.to_dict()).soup_steps == tuple(record["ingredients"])


def test_epoch_soup_through_the_cli(tmp_path):
    """`search --set epoch_soup=K` reaches every trial: each records its epoch soup."""
    import json

    from typer.testing import CliRunner

    from tests.conftest import TINY_SPACE
    from tlsearch.cli import app

    data = write_colour_dataset(tmp_path / "data", {"red": 12, "green": 12})
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=1, finetune_epochs=2))
    done = CliRunner().invoke(app, [
        "search", str(data), "--study", "s", "--trials", "2", "--space", str(space),
        "--weights", "none", "--cache-dir", str(tmp_path / "c"), "--no-baselines",
        "--no-isolate", "--pruner", "none", "--studies", str(tmp_path / "studies"),
        "--set", "epoch_soup=2", "--set", "unfreeze_blocks=1"])
    assert done.exit_code == 0, done.output
    results = [json.loads(p.read_text()) for p in
               (tmp_path / "studies" / "s" / "trials").glob("*/result.json")]
    complete = [r for r in results if r["state"] == "complete"
                and r["strategy"].get("head_init") != "probe"]
    assert complete and all(r["strategy"]["epoch_soup"] == 2 for r in complete)
    assert all(r["extra"]["epoch_soup"]["recipe"] == "epochs" for r in complete)
