"""The recommendation rule: the simplest trial within one standard error of the best, and
the floor check that gives it a linear probe on the best trial's own backbone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tlsearch import kept
from tlsearch.recommend import Candidate, paired_standard_error, select


def _probs(pred: np.ndarray, k: int = 3) -> np.ndarray:
    return np.eye(k)[pred] * 0.9 + 0.1 / k


def test_a_simpler_trial_within_one_standard_error_is_recommended():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=200)
    big = labels.copy()
    big[:20] = (labels[:20] + 1) % 3  # 90% right
    small = labels.copy()  # 89.5%: wrong on 21 images, 18 of them the same as `big`
    small[2:22] = (labels[2:22] + 1) % 3
    small[100] = (labels[100] + 1) % 3
    weak = labels.copy()
    weak[:80] = (labels[:80] + 1) % 3  # 60%
    probs = {1: _probs(big), 2: _probs(small), 3: _probs(weak)}
    from tlsearch.metrics import metric_value

    value = {n: metric_value("accuracy", labels, p.argmax(1), 3) for n, p in probs.items()}
    cands = [Candidate(1, value[1], 1_000_000), Candidate(2, value[2], 1_000),
             Candidate(3, value[3], 10)]
    chosen = select(cands, labels, probs, "accuracy")
    assert (chosen.chosen, chosen.best) == (2, 1)
    assert 0 < chosen.margin <= chosen.standard_error
    # "best" keeps the top trial; no saved predictions for the best: the best too.
    assert select(cands, labels, probs, "accuracy", rule="best").chosen == 1
    assert select(cands, labels, {2: probs[2]}, "accuracy").chosen == 1
    # A simpler trial without saved predictions, or of unknown size, is never preferred.
    assert select([cands[0], Candidate(2, value[2], None)], labels, probs,
                  "accuracy").chosen == 1
    with pytest.raises(ValueError, match="unknown selection rule"):
        select(cands, labels, probs, "accuracy", rule="median")


def test_paired_standard_error_is_zero_for_identical_predictions():
    labels = np.arange(30) % 3
    p = _probs(labels)
    assert paired_standard_error(labels, p, p, "balanced_accuracy") == 0.0
    q = p.copy()
    q[:3] = _probs((labels[:3] + 1) % 3)
    assert paired_standard_error(labels, p, q, "balanced_accuracy") > 0


def _add(study, number_value, strategy, **attrs):
    import optuna

    study.add_trial(optuna.trial.create_trial(
        value=number_value, user_attrs={"strategy": strategy, **attrs}))


def test_floor_check_takes_the_last_slot_for_the_best_trials_backbone(tmp_path):
    _floor_study(tmp_path)


def _floor_study(tmp_path):
    """A study whose fine-tuned best has its floor check queued, run and recommended."""
    from tests.conftest import TINY_SPACE
    from tlsearch.recommend import recommend_trial
    from tlsearch.search import MODEL_FILE, SearchConfig, open_study
    from tlsearch.search._prepare import _enqueue_floor
    from tlsearch.strategy import Strategy

    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=1, finetune_epochs=1)
                     .replace("tiny_cnn: [32]", "tiny_cnn: [32, 48]"))
    config = SearchConfig(data_dir=str(tmp_path), space=str(space), study="s",
                          out=str(tmp_path / "studies"), trials=6, weights="none",
                          select="1se")
    handle = open_study(config)
    probe32 = Strategy(backbone="tiny_cnn", image_size=32).to_dict()
    tune48 = Strategy(backbone="tiny_cnn", image_size=48, unfreeze_blocks=1).to_dict()
    _add(handle.study, 0.70, probe32, baseline="linear_probe")
    _add(handle.study, 0.90, tune48)
    notices = []
    _enqueue_floor(handle, lambda kind, info: notices.append(info["message"]))
    waiting = [t for t in handle.study.get_trials() if t.state.name == "WAITING"]
    assert len(waiting) == 1 and waiting[0].user_attrs["floor"] == 1
    floor = waiting[0].user_attrs["strategy"]
    assert (floor["image_size"], floor["unfreeze_blocks"], floor["head_init"]) == (48, 0, "probe")
    assert "tiny_cnn@48" in notices[0]
    _enqueue_floor(handle, lambda kind, info: None)  # queued already: nothing more
    assert sum(t.state.name == "WAITING" for t in handle.study.get_trials()) == 1
    # The floor check runs under --select best (the default) too; without baselines, not.
    best_only = open_study(SearchConfig(**dict(config.to_dict(), study="b", select="best",
                                               overrides=(), priors=())))
    _add(best_only.study, 0.90, tune48)
    _enqueue_floor(best_only, lambda kind, info: None)
    assert sum(t.state.name == "WAITING" for t in best_only.study.get_trials()) == 1
    # A sampled probe on that backbone whose model was dropped does not count.
    dropped = open_study(SearchConfig(**dict(config.to_dict(), study="d", overrides=(),
                                             priors=())))
    _add(dropped.study, 0.90, tune48)
    _add(dropped.study, 0.80, Strategy(backbone="tiny_cnn", image_size=48).to_dict())
    _enqueue_floor(dropped, lambda kind, info: None)
    assert sum(t.state.name == "WAITING" for t in dropped.study.get_trials()) == 1
    bare = open_study(SearchConfig(**dict(config.to_dict(), study="n", baselines=False,
                                          overrides=(), priors=())))
    _add(bare.study, 0.90, tune48)
    _enqueue_floor(bare, lambda kind, info: None)
    assert not any(t.state.name == "WAITING" for t in bare.study.get_trials())

    # The floor trial finishes 1 point below the fine-tune on 100 validation images:
    # within one standard error, so it is recommended.
    handle.study.tell(handle.study.ask().number, 0.89)
    labels = np.arange(100) % 2
    tuned, probe = labels.copy(), labels.copy()
    tuned[:10] = 1 - labels[:10]
    probe[1:11] = 1 - labels[1:11]  # 89%, wrong where the fine-tune is, but for 3 images
    probe[[50]] = 1 - labels[[50]]
    from tlsearch.data import Split

    Split(classes=("a", "b"), train=(), val=tuple((f"{i}.png", int(y)) for i, y in
                                                   enumerate(labels))).save(
        handle.dir / "split.json")
    for number, pred, trainable in ((1, tuned, 50_000), (2, probe, 66)):
        tdir = handle.trial_dir(number)
        tdir.mkdir(parents=True)
        (tdir / MODEL_FILE).write_bytes(b"kept")
        (tdir / "result.json").write_text(json.dumps({
            "params": {"trainable_max": trainable},
            "val_probabilities": _probs(pred, 2).tolist()}))
    selection = recommend_trial(handle)
    assert (selection.chosen, selection.best) == (2, 1)
    assert recommend_trial(handle, "best").chosen == 1
    assert recommend_trial(best_only).chosen == 0


def test_cli_choices_are_the_rules():
    from tlsearch.cli import Select
    from tlsearch.recommend import RULES

    assert [r.value for r in Select] == list(RULES)


def test_the_report_says_why_the_top_trial_was_not_recommended(tmp_path):
    from tlsearch.report import build_report

    _floor_study(tmp_path)
    html = build_report(tmp_path / "studies" / "s", tmp_path / "r.html").read_text()
    assert 'id="selection"' in html and "within one standard error" in html
    assert "--select best" in html and "the floor check" in html


def test_select_1se_through_the_cli_is_saved_and_a_covered_floor_is_not_checked(tmp_path):
    from typer.testing import CliRunner

    from tests.conftest import TINY_SPACE, write_colour_dataset
    from tlsearch.cli import app
    from tlsearch.search import load_config, open_study

    data = write_colour_dataset(tmp_path / "data", {"red": 12, "green": 12, "blue": 12})
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=1, finetune_epochs=1)
                     .replace("unfreeze_blocks: [0, 1]", "unfreeze_blocks: [1]"))
    result = CliRunner().invoke(app, [
        "search", str(data), "--space", str(space), "--study", "b", "--trials", "6",
        "--weights", "none", "--cache-dir", str(tmp_path / "cache"), "--select", "1se",
        "--studies", str(tmp_path / "studies"), "--no-isolate", "--no-blend-floor"])
    assert result.exit_code == 0, result.output
    config = load_config(tmp_path / "studies" / "b")
    assert config.select == "1se" and config.blend_floor is False
    trials = open_study(config, create=False).study.get_trials()
    # The linear-probe baseline ran on the only backbone and size: the floor is measured.
    assert not any(t.user_attrs.get("floor") is not None for t in trials)
    bad = CliRunner().invoke(app, ["search", str(data), "--select", "median"])
    assert bad.exit_code != 0 and "median" in bad.output


def _blend_study(tmp_path):
    """A study whose top trial fine-tunes and whose floor probe kept its model: two real
    models trained on the colour data, recorded as the search records them."""
    import optuna

    from tests.conftest import TINY_SPACE, write_colour_dataset
    from tlsearch.data import make_split, scan
    from tlsearch.search import MODEL_FILE, SearchConfig, open_study
    from tlsearch.strategy import Strategy
    from tlsearch.train import run_trial
    from tlsearch.trial_data import TrialData

    data = write_colour_dataset(tmp_path / "data", {"red": 20, "green": 20, "blue": 20})
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=1, finetune_epochs=1))
    config = SearchConfig(data_dir=str(data), space=str(space), study="s",
                          out=str(tmp_path / "studies"), trials=6, weights="none",
                          test_fraction=0.25)
    handle = open_study(config)
    split = make_split(scan(data), val_fraction=0.25, test_fraction=0.25, seed=0)
    split.save(handle.dir / "split.json")
    trial_data = TrialData.from_split(data, split, tmp_path / "cache")
    tune = Strategy(backbone="tiny_cnn", image_size=32, weights="none", unfreeze_blocks=1,
                    finetune_epochs=1, head_epochs=1, batch_size=16, seed=1)
    probe = Strategy(backbone="tiny_cnn", image_size=32, weights="none", head_init="probe",
                     head_dropout=0.0, batch_size=16, seed=1)
    for number, (strategy, value, attrs) in enumerate(((tune, 0.95, {}),
                                                       (probe, 0.90, {"floor": 0}))):
        result = run_trial(strategy, trial_data)
        tdir = handle.trial_dir(number)
        tdir.mkdir(parents=True)
        result.model.save(tdir / MODEL_FILE)
        (tdir / "result.json").write_text(json.dumps(dict(
            result.to_dict(), val_probabilities=result.val_probabilities.tolist())))
        handle.study.add_trial(optuna.trial.create_trial(value=value, user_attrs={
            "strategy": strategy.to_dict(), **attrs}))
    return handle, split


def test_a_fine_tuned_recommendation_is_averaged_with_its_floor_on_test_and_in_export(
        tmp_path):
    from tlsearch.export import export_trial, load_model_safely
    from tlsearch.holdout import blend_of, score_holdout
    from tlsearch.recommend import floor_partner
    from tlsearch.report import build_report
    from tlsearch.search import SearchConfig, open_study

    handle, split = _blend_study(tmp_path)
    assert floor_partner(handle, 0) == 1 and floor_partner(handle, 1) is None
    # An over-confident fine-tune: sure of every validation image, wrong about one, so
    # its own temperature is well above 1 (the colour data alone is too easy to show it).
    from tlsearch.calibration import calibrate
    from tlsearch.holdout import member_temperatures

    result_file = handle.trial_dir(0) / "result.json"
    recorded = json.loads(result_file.read_text())
    y_val = split.labels("val")
    sure = np.full((len(y_val), 3), 0.005)
    sure[np.arange(len(y_val)), y_val] = 0.99
    sure[0] = np.roll(sure[0], 1)
    result_file.write_text(json.dumps(dict(recorded, val_probabilities=sure.tolist())))
    scales = member_temperatures(handle, (0, 1), split)
    assert scales[0] > 1.5
    record = score_holdout(handle)
    blend = blend_of(record, 0)
    assert blend["members"] == [0, 1] and blend_of(record, 1) is None
    assert blend["member_temperatures"] == pytest.approx(scales)
    # The headline is the mean of the two models' test probabilities, each scaled by its
    # own validation temperature, scored once.
    probs = []
    from tlsearch.data import decode_image

    root = tmp_path / "data"
    x = np.stack([decode_image(root / p, 32) for p in split.paths("test")]).astype("float32")
    for n in (0, 1):
        model = kept.load(handle.trial_dir(n))
        probs.append(model.predict(x, verbose=0))
    from tlsearch.metrics import metric_value

    mean = np.mean([calibrate(p, t) for p, t in zip(probs, scales, strict=True)], axis=0)
    assert blend["value"] == pytest.approx(metric_value(
        "balanced_accuracy", split.labels("test"), mean.argmax(1), 3))
    assert score_holdout(handle)["blend"] == blend  # not scored again
    html = build_report(handle.dir, tmp_path / "r.html").read_text()
    assert 'id="blend"' in html and "averaged with the linear probe" in html
    # The export follows the study: two members, probabilities their scaled mean.
    summary = export_trial(handle.dir, tmp_path / "out", calibrate=False, tta=False)
    assert summary["blend_floor"] and summary["ensemble"]["members"] == [0, 1]
    assert summary["member_temperatures"] == pytest.approx(scales)
    exported = load_model_safely(tmp_path / "out" / "model.keras")
    np.testing.assert_allclose(exported.predict(x, verbose=0), mean, atol=1e-5)
    assert "floor blend" in (tmp_path / "out" / "MODEL_CARD.md").read_text()
    alone = export_trial(handle.dir, tmp_path / "alone", calibrate=False, tta=False,
                         blend_floor=False)
    assert not alone["blend_floor"]
    np.testing.assert_allclose(load_model_safely(tmp_path / "alone" / "model.keras").predict(
        x, verbose=0), probs[0], atol=1e-5)
    with pytest.raises(Exception, match="--blend-floor"):
        export_trial(handle.dir, tmp_path / "p", trial=1, blend_floor=True)
    # --no-blend-floor: the trial alone is the recommendation on test.
    off = open_study(SearchConfig(**dict(handle.config.to_dict(), blend_floor=False,
                                         overrides=(), priors=())), create=False)
    assert score_holdout(off)["blend"] is None


def test_a_head_only_solve_on_top_is_floor_checked_and_blended_with_the_exact_probe(tmp_path):
    """C, class weights and SGD epochs chosen on validation can lose to the plain probe
    on test: a head-only top gets the exact probe (not another solve) as its floor."""
    from tests.conftest import TINY_SPACE
    from tlsearch.recommend import floor_partner
    from tlsearch.search import MODEL_FILE, SearchConfig, open_study
    from tlsearch.search._prepare import _enqueue_floor
    from tlsearch.strategy import Strategy

    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=1, finetune_epochs=1))
    handle = open_study(SearchConfig(data_dir=str(tmp_path), space=str(space), study="h",
                                     out=str(tmp_path / "studies"), trials=6, weights="none"))
    solve = Strategy(backbone="tiny_cnn", image_size=32, imbalance="focal").to_dict()
    other = Strategy(backbone="tiny_cnn", image_size=32, head_epochs=2).to_dict()
    _add(handle.study, 0.90, solve)
    _add(handle.study, 0.85, other)
    for number in (0, 1):
        handle.trial_dir(number).mkdir(parents=True)
        (handle.trial_dir(number) / MODEL_FILE).write_bytes(b"kept")
    assert floor_partner(handle, 0) is None  # another solve is not its floor
    _enqueue_floor(handle, lambda kind, info: None)
    waiting = [t for t in handle.study.get_trials() if t.state.name == "WAITING"]
    assert len(waiting) == 1 and waiting[0].user_attrs["strategy"]["head_init"] == "probe"
    handle.study.tell(handle.study.ask().number, 0.80)
    handle.trial_dir(2).mkdir(parents=True)
    (handle.trial_dir(2) / MODEL_FILE).write_bytes(b"kept")
    assert floor_partner(handle, 0) == 2 and floor_partner(handle, 2) is None
