"""Does a soup of a trial's last epochs beat its best epoch on the held-out test split?

Run:  python -m benchmarks.epoch_soup STUDY_DIR... [--k 3] [--top 4] [--results NAME]

For each finished study (the benchmark in the results file uses the studies
`benchmarks/transfer_demo.py --workdir DIR` leaves in DIR/studies/imagenet-<seed>), the
`--top` best completed fine-tuning trials are trained again on the study's own split with
`epoch_soup: K` (Strategy field; `tlsearch.train._Engine._epoch_soup`): the last phase's
last K epochs are souped greedily on validation and kept only if the soup beats the
trial's best epoch there. Where the soup is kept, the same strategy is trained once more
with `epoch_soup: 0` (the same seed, so the same trajectory up to the end), and both
models are scored once on the study's test split; where it is not kept, the model is
the best epoch's by construction and the two test scores are equal. Nothing here
selects on the test split. Figures: per trial, validation and test balanced accuracy
with and without the soup, and the soup's extra seconds (its validation passes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import tlsearch  # noqa: F401  (native defaults)
from benchmarks import write_results


def _study_runs(study_dir: Path, k: int, top: int) -> list[dict]:
    import optuna

    from tlsearch.data import Split, decode_image
    from tlsearch.features import FeatureCache
    from tlsearch.metrics import compute_metrics
    from tlsearch.search import load_config, open_study
    from tlsearch.strategy import Strategy
    from tlsearch.train import run_trial
    from tlsearch.trial_data import TrialData

    config = load_config(study_dir)
    handle = open_study(config, create=False)
    metric = handle.study.user_attrs.get("metric") or "balanced_accuracy"
    split = Split.load(study_dir / "split.json")
    data = TrialData.from_split(Path(config.data_dir), split, config.cache_path)
    cache = FeatureCache(config.cache_path)
    trials = sorted((t for t in handle.study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.value is not None and Strategy.from_dict(t.user_attrs["strategy"]).fine_tunes),
        key=lambda t: -t.value)[:top]
    labels = np.asarray(split.labels("test"))
    decoded: dict[int, np.ndarray] = {}  # test images per size, decoded once

    def test_score(model, size: int) -> float:
        if size not in decoded:
            decoded[size] = np.stack([decode_image(Path(config.data_dir) / p, size)
                                      for p in split.paths("test")]).astype(np.float32)
        x = decoded[size]
        probs = np.asarray(model.predict(x, verbose=0, batch_size=64), dtype=np.float64)
        return float(compute_metrics(labels, probs, split.classes)[metric])

    runs = []
    for trial in trials:
        strategy = Strategy.from_dict(trial.user_attrs["strategy"])
        t0 = time.perf_counter()
        souped = run_trial(strategy.replace(epoch_soup=k), data, feature_cache=cache,
                           metric=metric)
        soup_seconds = time.perf_counter() - t0
        record = souped.extra.get("epoch_soup", {})
        row = {"study": f"{study_dir.parent.parent.name}/{study_dir.name}",
               "trial": trial.number, "depth": strategy.unfreeze_blocks,
               "epochs": strategy.finetune_epochs, "n_test": len(labels),
               "adopted": bool(record.get("adopted")),
               "ingredients": record.get("ingredients", []),
               "soup_val": souped.objective, "soup_test": test_score(souped.model,
                                                                     strategy.image_size),
               "soup_seconds": soup_seconds}
        if row["adopted"]:
            t0 = time.perf_counter()
            plain = run_trial(strategy, data, feature_cache=cache, metric=metric)
            row["plain_seconds"] = time.perf_counter() - t0
            row["plain_val"] = plain.objective
            row["plain_test"] = test_score(plain.model, strategy.image_size)
        else:
            row["plain_val"], row["plain_test"] = souped.objective, row["soup_test"]
        runs.append(row)
        print(json.dumps(row), flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("studies", nargs="+", type=Path)
    parser.add_argument("--k", type=int, default=3, help="Last epochs souped.")
    parser.add_argument("--top", type=int, default=4, help="Fine-tuning trials per study.")
    parser.add_argument("--results", default="RESULTS-epoch-soup.md")
    args = parser.parse_args()
    runs = [row for study in args.studies for row in _study_runs(study, args.k, args.top)]
    command = ("python -m benchmarks.epoch_soup " + " ".join(str(s) for s in args.studies)
               + f" --k {args.k} --top {args.top}")
    lines = [f"# Epoch soup of a trial's last {args.k} epochs on the held-out test split "
             "(issue #22)", "",
             f"Command: `{command}` (2-core CPU, offline).", "",
             "Balanced accuracy; the soup is kept only where it beats the best epoch on "
             "validation (then `plain` is the same strategy retrained without it).", "",
             "| study | trial | depth | fine-tune epochs | kept | epochs averaged | val plain "
             "| val soup | test plain | test soup | test points | seconds plain / soup |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        seconds = (f"{r['plain_seconds']:.0f} / {r['soup_seconds']:.0f}" if "plain_seconds" in r
                   else f"— / {r['soup_seconds']:.0f}")
        lines.append(
            f"| {r['study']} | #{r['trial']} | {r['depth']} | {r['epochs']} | "
            f"{'yes' if r['adopted'] else 'no'} | {', '.join(map(str, r['ingredients']))} | "
            f"{r['plain_val']:.3f} | {r['soup_val']:.3f} | {r['plain_test']:.3f} | "
            f"{r['soup_test']:.3f} | {100 * (r['soup_test'] - r['plain_test']):+.1f} | "
            f"{seconds} |")
    kept = [r for r in runs if r["adopted"]]
    diffs = [100 * (r["soup_test"] - r["plain_test"]) for r in kept]
    lines += ["", f"Kept in {len(kept)} of {len(runs)} trials. Where kept, test points: "
              + (f"mean {np.mean(diffs):+.2f}, better {sum(d > 0 for d in diffs)}, "
                 f"worse {sum(d < 0 for d in diffs)}, equal {sum(d == 0 for d in diffs)}."
                 if kept else "none."),
              "", "Raw records:", "", "```", *(json.dumps(r) for r in runs), "```"]
    print(f"wrote {write_results(args.results, lines)}")


if __name__ == "__main__":
    main()
