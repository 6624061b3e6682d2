"""Would averaging the recommendation with its floor probe hold issue #24's floor?

Run:  python -m benchmarks.floor_blend WORKDIR... (the `--workdir` folders of
      `python -m benchmarks.transfer_demo` runs; every study in WORKDIR/studies)

For each study: the recommendation (top validation score), the linear probe on its own
backbone and size that the study kept (the floor check, a baseline or a sampled head-only
solve), and the average of their probabilities. Validation scores come from the trials'
recorded predictions; test scores from the saved models on the study's test split, read
here after every choice was made. Nothing here changes what tlsearch recommends: it asks
whether a two-member ensemble would be the better default. Writes
benchmarks/RESULTS-floor-blend.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks import write_results


def _probs(model_path: Path, root: Path, paths: list[str], size: int) -> np.ndarray:
    from tlsearch.data import decode_image
    from tlsearch.export import load_model_safely

    model = load_model_safely(model_path)
    x = np.stack([decode_image(root / p, size) for p in paths]).astype(np.float32)
    return np.asarray(model.predict(x, verbose=0, batch_size=64), dtype=np.float64)


def one_study(study_dir: Path) -> dict | None:
    from optuna.trial import TrialState

    from tlsearch.baselines import is_linear_probe
    from tlsearch.data import Split
    from tlsearch.metrics import metric_value
    from tlsearch.recommend import recommend_trial
    from tlsearch.search import MODEL_FILE, load_config, open_study
    from tlsearch.strategy import Strategy

    handle = open_study(load_config(study_dir), create=False)
    split = Split.load(study_dir / "split.json")
    metric = handle.study.user_attrs.get("metric") or "balanced_accuracy"
    top = recommend_trial(handle, "best")
    trials = {t.number: t for t in handle.study.get_trials(states=(TrialState.COMPLETE,))}
    s = Strategy.from_dict(trials[top.chosen].user_attrs["strategy"])
    def probe_on_same(t) -> bool:
        p = Strategy.from_dict(t.user_attrs["strategy"])
        return (p.backbone, p.image_size) == (s.backbone, s.image_size) and is_linear_probe(p)

    probes = [t for t in trials.values() if (handle.trial_dir(t.number) / MODEL_FILE).is_file()
              and probe_on_same(t)]
    if not probes:
        return None
    floor = max(probes, key=lambda t: (t.value, -t.number))
    k = len(split.classes)
    root = Path(handle.config.data_dir)

    def val_probs(number: int) -> np.ndarray:
        data = json.loads((handle.trial_dir(number) / "result.json").read_text())
        return np.asarray(data["val_probabilities"], dtype=np.float64)

    def score(labels: np.ndarray, probs: np.ndarray) -> float:
        return metric_value(metric, labels, probs.argmax(1), k)

    y_val, y_test = split.labels("val"), split.labels("test")
    row = {"study": f"{study_dir.parent.parent.name}/{study_dir.name}", "top": top.chosen,
           "floor": floor.number, "same": floor.number == top.chosen}
    pv = {n: val_probs(n) for n in (top.chosen, floor.number)}
    pt = {n: _probs(handle.trial_dir(n) / MODEL_FILE, root, split.paths("test"), s.image_size)
          for n in (top.chosen, floor.number)}
    wise = _wise(handle, top.chosen, floor.number, s, root, split)
    if wise is not None:
        pv["wise"], pt["wise"] = wise
    for part, labels, probs in (("val", y_val, pv), ("test", y_test, pt)):
        row[f"{part}_top"] = score(labels, probs[top.chosen])
        row[f"{part}_floor"] = score(labels, probs[floor.number])
        row[f"{part}_blend"] = score(labels, (probs[top.chosen] + probs[floor.number]) / 2)
        row[f"{part}_wise"] = score(labels, probs["wise"]) if "wise" in probs else None
    return row


def _wise(handle, top: int, floor: int, s, root: Path, split) -> tuple | None:
    """WiSE-FT's weight-space average (Wortsman et al., CVPR 2022), alpha = 0.5: one
    model, where the two share every weight shape (BN statistics re-estimated on the
    training images when the fine-tune adapted its own). None where they do not."""
    from tlsearch.data import decode_image
    from tlsearch.export import load_model_safely
    from tlsearch.search import MODEL_FILE
    from tlsearch.soup import average_weights, reestimate_batchnorm

    a = load_model_safely(handle.trial_dir(top) / MODEL_FILE)
    b = load_model_safely(handle.trial_dir(floor) / MODEL_FILE)
    wa, wb = a.get_weights(), b.get_weights()
    if len(wa) != len(wb) or any(x.shape != y.shape for x, y in zip(wa, wb, strict=True)):
        return None
    a.set_weights(average_weights([wa, wb]))
    if s.bn_mode == "adapt":
        x = np.stack([decode_image(root / p, s.image_size) for p in split.paths("train")])
        reestimate_batchnorm(a, x.astype(np.float32))

    def probs(part: str) -> np.ndarray:
        x = np.stack([decode_image(root / p, s.image_size) for p in split.paths(part)])
        return np.asarray(a.predict(x.astype(np.float32), verbose=0, batch_size=64),
                          dtype=np.float64)

    return probs("val"), probs("test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", type=Path, nargs="+")
    args = parser.parse_args()
    rows = []
    for workdir in args.workdirs:
        for study_dir in sorted((workdir / "studies").iterdir()):
            if (study_dir / "config.json").is_file():
                row = one_study(study_dir)
                if row:
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    lines = ["# The recommendation averaged with its floor probe (issue #24)", "",
             "Command: `python -m benchmarks.floor_blend " + " ".join(
                 str(w) for w in args.workdirs) + "` over the studies of the transfer "
             "benchmark runs (RESULTS-transfer*.md); balanced accuracy.", "",
             "| study | top trial | floor probe | val: top / floor / blend "
             "| test: top / floor / blend | WiSE-FT weights, val / test |",
             "|---|---|---|---|---|---|"]

    def wise(r: dict) -> str:
        return ("— (shapes differ)" if r["val_wise"] is None
                else f"{r['val_wise']:.3f} / {r['test_wise']:.3f}")

    for r in rows:
        lines.append(f"| {r['study']} | #{r['top']} | #{r['floor']} | "
                     f"{r['val_top']:.3f} / {r['val_floor']:.3f} / {r['val_blend']:.3f} | "
                     f"{r['test_top']:.3f} / {r['test_floor']:.3f} / {r['test_blend']:.3f} | "
                     f"{wise(r) if not r['same'] else '—'} |")
    differ = [r for r in rows if not r["same"]]
    if differ:
        below = sum(r["test_blend"] < r["test_floor"] for r in differ)
        mean = np.mean([r["test_blend"] - r["test_top"] for r in differ])
        lines += ["", f"Where the top trial is not itself the probe ({len(differ)} studies): "
                  f"the blend is below the floor probe on test in {below}, and "
                  f"{100 * mean:+.1f} points against the top trial on average.", ""]
        souped = [r for r in differ if r["test_wise"] is not None]
        if souped:
            below = sum(r["test_wise"] < r["test_floor"] for r in souped)
            mean = np.mean([r["test_wise"] - r["test_blend"] for r in souped])
            lines += [f"WiSE-FT's weight average (one model) where the shapes match "
                      f"({len(souped)} studies): below the floor probe on test in {below}, "
                      f"{100 * mean:+.1f} points against the output blend on average.", ""]
    print(f"wrote {write_results('RESULTS-floor-blend.md', lines)}")


if __name__ == "__main__":
    main()
