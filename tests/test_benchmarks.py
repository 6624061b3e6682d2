"""The peer benchmark: a smoke run that must produce every figure, and its arithmetic."""

from __future__ import annotations

import json

import pytest

from benchmarks import peers

FIGURE_COLUMNS = ("trials completed", "trials / h", "trial-epochs / h", "best val bal.acc",
                  "held-out test bal.acc", "reached best peer's final score at",
                  "reached weaker peer's final score at")


def _run(tool: str, seed: int, *, trials: list[tuple[float, float | None]], epochs: int,
         test: float, budget: float = 100.0, kind: str = "budget") -> dict:
    spec = {"tool": tool, "kind": kind, "dataset": "d", "seed": seed, "budget_s": budget}
    return {"spec": spec, "wall_s": budget, "error": None, "test_score": test,
            "epoch_times": [budget * i / (epochs + 1) for i in range(1, epochs + 1)],
            "trials": [{"t": t, "state": "complete" if v is not None else "pruned", "value": v}
                       for t, v in trials]}


def test_a_run_without_budget_runs_measures_only_the_floor_target():
    lines, targets = peers.summarise([], budget_s=60.0)
    assert targets == dict.fromkeys(targets)  # nothing measured, nothing claimed
    assert "- not measured in this run: the frozen-only" in "\n".join(lines)


def test_figures_and_targets_from_timelines():
    runs = []
    for seed in (0, 1):
        runs += [
            _run("tlsearch", seed, trials=[(5, 0.6), (10, 0.9), (150, 0.99)], epochs=400,
                 test=0.88),
            _run("kerastuner", seed, trials=[(40, 0.7), (90, 0.85)], epochs=20, test=0.86),
            _run("optuna", seed, trials=[(50, None), (80, 0.8)], epochs=30, test=0.84),
        ]
    lines, targets = peers.summarise(runs, budget_s=100.0)
    text = "\n".join(lines)
    assert targets == {"time_to_peer_best": True, "epochs_per_hour": True,
                       "test_not_worse": True, "frozen_floor": None, "overhead": None}
    # The trial at t=150 ended after the budget: it neither counts nor sets the best.
    assert ("| tlsearch | 2.0 (2.0-2.0) | 72 (72-72) | 14400 (14400-14400) | 0.900 (0.900-0.900) "
            "| 0.880 (0.880-0.880) | 10% / 10% |") in text
    assert "| optuna | 1.0 (1.0-1.0) |" in text
    assert "20.0x kerastuner's" in text

    slow = [_run("tlsearch", 0, trials=[(60, 0.9)], epochs=40, test=0.7),
            _run("kerastuner", 0, trials=[(40, 0.85)], epochs=20, test=0.86),
            _run("optuna", 0, trials=[(80, 0.8)], epochs=30, test=0.84)]
    _, targets = peers.summarise(slow, budget_s=100.0)
    assert targets["time_to_peer_best"] is False  # reached at 60% of the budget
    assert targets["epochs_per_hour"] is False
    assert targets["test_not_worse"] is False


def test_the_overhead_profile_charges_each_trial_from_the_last_ones_end():
    run = _run("tlsearch", 0, trials=[], epochs=0, test=0.9)
    run["trials"] = [
        {"t": 4.0, "start": 2.0, "state": "pruned", "value": None,
         "timings": {"prefix": 1.0, "train": 0.5, "eval": 0.1, "trace": 0.2, "total": 2.0}},
        {"t": 5.0, "start": 4.5, "state": "pruned", "value": None,  # 0.5 s before its start
         "timings": {"train": 0.6, "eval": 0.1, "head_solve": 0.1, "total": 0.8}},
        {"t": 9.0, "start": 5.2, "state": "complete", "value": 0.9,
         "timings": {"train": 3.0, "eval": 0.2, "total": 3.5}},
    ]
    lines, ok = peers.overhead_profile([run])
    text = "\n".join(lines)
    # Pruned: 3 s of wall (2 + 1), 2.3 s of compute: 23% overhead, within the target.
    assert ok is True
    assert ("| d | budget | 0 | pruned | 2 | 1.50 | 33% | 37% | 7% | 7% | 3% | 0% | 0% | 13% "
            "| **23%** |") in text
    assert "| d | budget | 0 | complete | 1 | 4.00 |" in text
    run["trials"][1]["timings"]["train"] = 0.1  # now 1.8 s of 3: 40% overhead
    assert peers.overhead_profile([run])[1] is False
    assert peers.overhead_profile([_run("optuna", 0, trials=[], epochs=0, test=0.9)]) == ([], None)


def test_datasets_are_real_images_with_their_classes(tmp_path):
    from PIL import Image

    faces = peers.write_dataset("lfw_faces", tmp_path)
    assert sorted(p.name for p in faces.iterdir()) == ["face", "not_face"]
    assert len(list((faces / "face").glob("*.png"))) == 100
    with Image.open(next((faces / "not_face").glob("*.png"))) as im:
        assert im.mode == "RGB" and im.size == (64, 64)
    digits = peers.write_dataset("digits", tmp_path, per_class=5)
    assert all(len(list(d.glob("*.png"))) == 5 for d in digits.iterdir() if d.is_dir())
    with pytest.raises(ValueError, match="unknown dataset"):
        peers.write_dataset("cifar", tmp_path)


def test_run_one_in_a_fresh_process(tmp_path):
    """The default path: each run is a subprocess that writes its result as JSON."""
    data = peers.write_dataset("lfw_faces", tmp_path, per_class=6)
    space = tmp_path / "space.yaml"
    space.write_text(peers.space_yaml(peers.SMOKE, frozen=True))
    spec = peers.RunSpec(tool="floor", kind="floor", dataset="lfw_faces", data_dir=str(data),
                         space=str(space), seed=0, weights="none",
                         workdir=str(tmp_path / "floor"))
    result = peers._launch(spec, in_process=False)
    assert result["error"] is None, result["error"]
    assert result["floor"]["total_s"] > 0 and result["floor"]["images"] == 10  # 12 minus 2 held out


def test_smoke_run_produces_every_figure(tmp_path):
    out = tmp_path / "RESULTS.md"
    rc = peers.main(["--smoke", "--per-class", "8", "--budget-min", "0.2", "--seeds", "0",
                     "--datasets", "digits", "--frozen-trials", "1", "--in-process",
                     "--results", str(out)])
    assert rc == 0
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert [r["error"] for r in runs] == [None] * len(runs)
    kinds = sorted((r["spec"]["kind"], r["spec"]["tool"]) for r in runs)
    assert kinds == sorted([("budget", t) for t in peers.TOOLS] + [("floor", "floor")]
                           + [("frozen", t) for t in peers.TOOLS])
    for run in runs:
        if run["spec"]["kind"] == "floor":
            assert run["floor"]["total_s"] > 0
            continue
        figures = peers.figures(run)
        assert figures["trials"] >= 1 and figures["epochs"] >= 1, run["spec"]
        assert figures["best_val"] is not None and run["test_score"] is not None
        assert run["chosen"]["backbone"] == "tiny_cnn"
    text = out.read_text()
    for column in FIGURE_COLUMNS:
        assert column in text
    for tool in peers.TOOLS:
        row = next(line for line in text.splitlines() if line.startswith(f"| {tool} |"))
        assert "failed" not in row and "n/a" not in row
        assert f"| digits | {tool} | 1 (" in text  # the frozen-only search, with its ratio
    assert "trial-epochs per hour:" in text and text.count("\n- ") == 5  # the five targets
    assert "### Where a tlsearch trial's time goes" in text
    assert "| digits | budget | 0 | " in text and "| digits | frozen-only | 0 | " in text

    # The tables can be re-written from the stored runs, to the same text.
    again = tmp_path / "again.md"
    assert peers.main(["--from-json", str(out.with_suffix(".json")), "--results",
                       str(again)]) == 0
    assert again.read_text() == text


def test_frozen_part_only_for_chosen_tools_and_sizes(tmp_path):
    out = tmp_path / "RESULTS.md"
    assert peers.main(["--smoke", "--per-class", "6", "--budget-min", "0", "--seeds", "0",
                       "--datasets", "lfw_faces", "--frozen-trials", "1", "--frozen-sizes",
                       "40", "--tools", "tlsearch", "--in-process", "--results", str(out)]) == 0
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert sorted((r["spec"]["kind"], r["spec"]["tool"]) for r in runs) == [
        ("floor", "floor"), ("frozen", "tlsearch")]
    assert list(runs[0]["floor"]["per_backbone"]) == ["tiny_cnn@40"]
    assert runs[1]["chosen"]["image_size"] == 40
    text = out.read_text()
    assert "| lfw_faces | tlsearch | 1 (" in text and "| kerastuner |" not in text
    assert "- not measured in this run: tlsearch reaches" in text


def test_pruning_replay_new_steps_never_judge_a_fine_tuner_in_its_warm_up():
    from benchmarks.pruning_replay import replay

    def run(number, unfreeze, curve):
        strategy = {"backbone": "tiny_cnn", "image_size": 32, "weights": "none",
                    "head_epochs": 5, "finetune_epochs": 3, "unfreeze_blocks": unfreeze,
                    "head_lr": 0.01, "backbone_lr": 0.001}
        return {"number": number, "strategy": strategy, "objective": max(curve),
                "curve": curve}

    # Head-only trials look good early; fine-tuners start lower (their warm-up) and end
    # best once they fine-tune: the pattern an early rung gets wrong.
    runs = []
    for i in range(12):
        if i % 2:
            runs.append(run(i, 1, [0.5, 0.55, 0.6, 0.62, 0.64, 0.8, 0.9, 0.95 + i / 1000]))
        else:
            runs.append(run(i, 0, [0.7 + i / 1000] * 5))
    old = replay(runs, "median", "old")
    new = replay(runs, "median", "new")
    assert old["killed_in_warmup"] > 0 and old["best_killed"]
    assert new["killed_in_warmup"] == 0 and not new["best_killed"]
    assert new["epochs_full"] == old["epochs_full"] == 6 * 5 + 6 * 8
