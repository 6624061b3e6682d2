"""Do the rankers predict what the search finds? Every ranker against real outcomes.

Run:  python -m benchmarks.logme_demo [--datasets textures lfw_faces] [--trials 24]

For each dataset (the textures demo `make demo` searches; scikit-image's faces vs
non-faces), the candidates are the offline ImageNet EfficientNet-Lite family at 64 and
128 px and the self-pretrained bundled MobileNetV3Small at the same sizes (8 pairs).
Before any training every ranker of `tlsearch.rank.RANKERS` scores each pair on the
frozen features of the training split (LogME, cosine k-NN, H-score, a logistic-regression
probe on validation, and compute as the prior); then a search (no baselines, no pruning,
held-out test split kept out) trains strategies on them, and each pair's outcome is the
best validation score it reached. Per ranker: weighted Kendall tau against the outcomes
and top-1 regret (points lost by trusting its first choice). Results:
benchmarks/RESULTS-logme.md.
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SPACE = """\
name: rankers
backbones:
  efficientnet_lite0: [64, 128]
  efficientnet_lite1: [64, 128]
  efficientnet_lite2: [64, 128]
  mobilenet_v3_small: [64, 128]
unfreeze_blocks: [0, 1]
bn_mode: frozen
head_lr: {low: 3.0e-3, high: 3.0e-2, log: true}
backbone_lr_ratio: 0.2
head_epochs: 5
finetune_epochs: 3
batch_size: 32
augmentation: none
imbalance: [none, class_weight]
"""


def _one(dataset: str, tmp: Path, trials: int) -> tuple[list[dict], dict, int]:
    from benchmarks.peers import write_dataset
    from tlsearch.rank import ranker_agreement
    from tlsearch.search import SearchConfig, open_study, run_search

    data = write_dataset(dataset, tmp)
    space = tmp / "space.yaml"
    space.write_text(SPACE)
    config = SearchConfig(data_dir=str(data), space=str(space), study=f"rank-{dataset}",
                          out=str(tmp / "studies"), trials=trials, weights="auto",
                          cache_dir=str(tmp / "cache"), pruner="none", baselines=False,
                          test_fraction=None, seed=0,
                          ranker="sfda")  # the costliest ranker ranks, so every one is scored
    run_search(config)
    study = open_study(config, create=False).study
    outcome: dict[str, float] = {}
    complete = 0
    for t in study.trials:
        if t.state.name != "COMPLETE":
            continue
        complete += 1
        s = t.user_attrs["strategy"]
        key = f"{s['backbone']}@{s['image_size']}"
        outcome[key] = max(outcome.get(key, -1.0), t.value)
    ranking = study.user_attrs["ranking"]
    return ranking, ranker_agreement(ranking, outcome) | {"_outcome": outcome}, complete


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["textures", "lfw_faces"],
                        choices=["textures", "lfw_faces", "digits"])
    parser.add_argument("--trials", type=int, default=24)
    args = parser.parse_args()
    os.environ.setdefault("TLSEARCH_OFFLINE", "1")
    import tempfile

    from benchmarks import machine, write_results
    from tlsearch.rank import RANKERS

    lines = [
        "# Rankers against what the search found: results", "",
        f"Command: `python -m benchmarks.logme_demo --datasets {' '.join(args.datasets)} "
        f"--trials {args.trials}`",
        f"Machine: {machine()}, Python "
        f"{platform.python_version()}; ImageNet EfficientNet-Lite0/1/2 (offline, from their "
        "weight packages) and the self-pretrained MobileNetV3Small, at 64 and 128 px; seed 0.",
        "",
    ]
    summary: dict[str, list[tuple[float | None, float | None]]] = {r: [] for r in RANKERS}
    for dataset in args.datasets:
        tmp = Path(tempfile.mkdtemp(prefix=f"tlsearch-bench-rank-{dataset}-"))
        ranking, agreement, complete = _one(dataset, tmp, args.trials)
        outcome = agreement.pop("_outcome")
        lines += [f"## {dataset} ({complete} completed trials of {args.trials})", "",
                  "| pair | LogME | k-NN | H-score | SFDA | probe | GFLOPs | best trial found |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in ranking:
            best = outcome.get(r["key"])
            lines.append(f"| {r['key']} | {r['logme']:.4f} | {r['knn']:.3f} | "
                         f"{r['hscore']:.2f} | {r.get('sfda', float('nan')):.3f} | "
                         f"{r['probe_balanced_accuracy']:.3f} | "
                         f"{r['size']:.2g} | {'—' if best is None else f'{best:.3f}'} |")
        lines += ["", "| ranker | weighted Kendall tau | top-1 regret (points) | pairs |",
                  "|---|---|---|---|"]
        for name, a in agreement.items():
            tau = "—" if a["tau"] is None else f"{a['tau']:+.2f}"
            regret = "—" if a["regret"] is None else f"{100 * a['regret']:.1f}"
            lines.append(f"| {name} | {tau} | {regret} | {a['pairs']} |")
            summary[name].append((a["tau"], a["regret"]))
        lines.append("")
        print("\n".join(lines), flush=True)
    lines += ["## Over the datasets", "", "| ranker | tau per dataset | regret per dataset |",
              "|---|---|---|"]
    for name, values in summary.items():
        taus = ", ".join("—" if t is None else f"{t:+.2f}" for t, _ in values)
        regrets = ", ".join("—" if r is None else f"{100 * r:.1f}" for _, r in values)
        lines.append(f"| {name} | {taus} | {regrets} |")
    lines.append("")
    write_results("RESULTS-logme.md", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
