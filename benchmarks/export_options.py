"""Is the best trial the best model to ship? Export options on the held-out test split.

Run:  python -m benchmarks.export_options STUDY_DIR... [--out FILE]

For each finished study (the benchmark in the results file uses the studies
`benchmarks/transfer_demo.py --workdir DIR` leaves in DIR/studies/imagenet-<seed>: the
textures demo, faces vs non-faces and the digit demo, seeds 0 and 1), `tlsearch export`
is run with each option, and the exported model's own held-out test score (measured by
the export once, after every choice was made on validation) is collected:

- **trial**: the recommended trial as it was trained (`--no-calibrate --no-tta`);
- **+T**: temperature-scaled (the default calibration);
- **+T+TTA**: and test-time views adopted if they win on validation (the default);
- **+T, TTA forced**: the views always used (computed from the `+T` model), to see
  what the validation gate costs or saves;
- **soup+T(+TTA)**: greedy weight soup (`--soup greedy`);
- **uniform soup+T**: every kept model with the trial's architecture averaged
  (`--soup uniform`, the paper's baseline recipe);
- **ensemble+T(+TTA)**: greedy prediction ensemble (`--ensemble`);
- **default**: what plain `tlsearch export` writes: where the recommendation fine-tunes,
  the floor blend (the trial and its linear probe, each scaled by its own validation
  temperature, averaged), then +T+TTA; otherwise the same as +T+TTA.

Figures: balanced accuracy and expected calibration error (15 bins) on test, CPU
latency per image at batch 1 (every member and view included), and what the greedy
choices kept. Nothing here selects on the test split; the export options were
chosen on validation by the export itself. Writes benchmarks/RESULTS-export.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks import write_results

#: (name, export keyword arguments); "forced" variants are computed, not exported.
VARIANTS = (
    ("trial", {"calibrate": False, "tta": False, "blend_floor": False}),
    ("+T", {"calibrate": True, "tta": False, "blend_floor": False}),
    ("+T+TTA", {"calibrate": True, "tta": True, "blend_floor": False}),
    ("soup+T", {"calibrate": True, "tta": False, "soup": "greedy"}),
    ("soup+T+TTA", {"calibrate": True, "tta": True, "soup": "greedy"}),
    ("uniform soup+T", {"calibrate": True, "tta": False, "soup": "uniform"}),
    ("ensemble+T", {"calibrate": True, "tta": False, "ensemble": True}),
    ("ensemble+T+TTA", {"calibrate": True, "tta": True, "ensemble": True}),
    ("default", {}),
)


def _forced_tta(out: Path, study_dir: Path) -> dict:
    """The `+T` export with the strategy's views always averaged, on test."""
    import numpy as np

    from tlsearch.calibration import expected_calibration_error
    from tlsearch.data import Split, decode_image
    from tlsearch.export import load_model_safely
    from tlsearch.latency import measure_latency_ms
    from tlsearch.metrics import compute_metrics
    from tlsearch.search import load_config
    from tlsearch.strategy import Strategy
    from tlsearch.tta import tta_probabilities, views_for

    strategy = Strategy.from_dict(json.loads((out / "strategy.json").read_text()))
    config = load_config(study_dir)
    split = Split.load(study_dir / "split.json")
    model = load_model_safely(out / "model.keras")
    x = np.stack([decode_image(Path(config.data_dir) / p, strategy.image_size)
                  for p in split.paths("test")])
    labels = np.asarray(split.labels("test"))
    views = views_for(strategy.augmentation)
    probs = tta_probabilities(model, x, views)
    return {"value": float(compute_metrics(labels, probs, split.classes)["balanced_accuracy"]),
            "ece": expected_calibration_error(probs, labels),
            "latency_ms": measure_latency_ms(model, strategy.image_size) * len(views),
            "kept": f"views {'+'.join(views)}"}


def run(study_dir: Path, scratch: Path) -> dict:
    from tlsearch.export import export_trial

    row = {"study": f"{study_dir.parent.parent.name}/{study_dir.name}"}
    for name, kwargs in VARIANTS:
        out = scratch / f"{study_dir.parent.parent.name}-{study_dir.name}-{name}"
        summary = export_trial(study_dir, out, **kwargs)
        test = summary["exported_test"]
        kept = []
        if summary.get("soup"):
            kept.append(f"{summary['soup']['recipe']} soup of "
                        f"{len(summary['soup']['ingredients'])}")
        if summary.get("blend_floor"):
            kept.append(f"floor blend with #{summary['ensemble']['members'][1]}")
        elif summary.get("ensemble"):
            kept.append(f"ensemble of {len(summary['ensemble']['members'])}")
        if len(summary["tta"]["views"]) > 1:
            kept.append("views " + "+".join(summary["tta"]["views"]))
        row[name] = {"value": test["value"], "ece": test["ece"],
                     "latency_ms": summary["latency_ms"], "kept": ", ".join(kept) or "—"}
        row.setdefault("trial_number", summary["trial"])
        row.setdefault("n_test", test["n_test"])
        if name == "+T":
            row["+T, TTA forced"] = _forced_tta(out, study_dir)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", type=Path, nargs="+", help="finished study folders")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).with_name("RESULTS-export.md"))
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="tlsearch-export-options-"))
    rows = [run(study.resolve(), scratch) for study in args.studies]
    names = [n for n, _ in VARIANTS[:3]] + ["+T, TTA forced"] + [n for n, _ in VARIANTS[3:]]
    lines = [
        "# Export options on the held-out test split (issue #22)", "",
        "Command: `python -m benchmarks.export_options " + " ".join(
            str(s) for s in args.studies) + "` (2-core CPU, offline), over the studies "
        "`benchmarks/transfer_demo.py --workdir DIR` leaves.", "",
        "Balanced accuracy on test (difference from the trial alone, points), then ECE:", "",
        "| study | test images | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names)]
    for r in rows:
        base = r["trial"]["value"]
        cells = [f"{r[n]['value']:.3f} ({100 * (r[n]['value'] - base):+.1f})" for n in names]
        lines.append(f"| {r['study']} | {r['n_test']} | " + " | ".join(cells) + " |")
    lines += ["", "Expected calibration error on test (15 bins):", "",
              "| study | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in rows:
        lines.append(f"| {r['study']} | " + " | ".join(f"{r[n]['ece']:.3f}" for n in names)
                     + " |")
    lines += ["", "CPU latency per image, batch 1, ms (what the greedy choices kept):", "",
              "| study | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in rows:
        lines.append(f"| {r['study']} | " + " | ".join(
            f"{r[n]['latency_ms']:.1f} ({r[n]['kept']})" for n in names) + " |")
    mean = {n: sum(100 * (r[n]["value"] - r["trial"]["value"]) for r in rows) / len(rows)
            for n in names}
    wins = {n: sum(r[n]["value"] > r["trial"]["value"] for r in rows) for n in names}
    losses = {n: sum(r[n]["value"] < r["trial"]["value"] for r in rows) for n in names}
    lines += ["", "Against the trial alone, over the studies: mean difference (points), "
              "studies better / worse:", ""]
    lines += [f"- {n}: {mean[n]:+.2f}; {wins[n]} better, {losses[n]} worse" for n in names]
    lines += ["", "Raw records:", "", "```", *(json.dumps(r) for r in rows), "```", ""]
    print(f"wrote {write_results(args.out, lines)}")


if __name__ == "__main__":
    main()
