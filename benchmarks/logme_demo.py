"""Does LogME's ranking predict what the search finds? Rank correlation on the demo data.

Run:  python -m benchmarks.logme_demo [--trials 20]

On the textures demo (the one `make demo` searches), the candidates are the offline
ImageNet EfficientNet-Lite family at two sizes each and the self-pretrained bundled
MobileNetV3Small: LogME ranks them from frozen features before any training, then a
search (no baselines, pruning off) trains strategies on all of them, and the Spearman
correlation between each candidate's LogME score and the best validation balanced
accuracy it reached is reported. Results: benchmarks/RESULTS-logme.md.
"""

from __future__ import annotations

import argparse
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SPACE = """\
name: logme-sizes
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    args = parser.parse_args()
    os.environ.setdefault("TLSEARCH_OFFLINE", "1")

    from benchmarks import demo_with_space, write_results
    from tlsearch.report.context import _ranking
    from tlsearch.study import SearchConfig, open_study, run_search

    data, space = demo_with_space("tlsearch-bench-logme-", SPACE, kind="textures")
    tmp = data.parent
    config = SearchConfig(data_dir=str(data), space=str(space), study="logme",
                          out=str(tmp / "studies"), trials=args.trials, weights="auto",
                          cache_dir=str(tmp / "cache"), pruner="none", baselines=False,
                          test_fraction=None, seed=0)
    run_search(config)
    study = open_study(config, create=False).study
    complete = [{"strategy": t.user_attrs["strategy"], "value": t.value}
                for t in study.trials if t.state.name == "COMPLETE"]
    ranking = _ranking(study.user_attrs["ranking"], complete)
    lines = [
        "# LogME ranking vs what the search found (demo data)",
        "",
        f"Command: `python -m benchmarks.logme_demo --trials {args.trials}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}; ImageNet EfficientNet-Lite0/1/2 (offline, from "
        "their weight packages) and the self-pretrained MobileNetV3Small, at 64 and 128 px; "
        "textures demo (659 images; 0.2 held out for test, 0.2 of the rest validation).",
        "",
        "| LogME rank | backbone@size | LogME | linear probe bal.acc | best trial bal.acc |",
        "|---|---|---|---|---|",
    ]
    for i, row in enumerate(ranking["rows"], 1):
        best = "—" if row["best"] is None else f"{row['best']:.3f}"
        lines.append(f"| {i} | {row['key']} | {row['logme']:.4f} | {row['probe']:.3f} | "
                     f"{best} |")
    rho = ranking["spearman"]
    lines += ["", f"Spearman rank correlation (LogME vs best trial): "
              f"{'n/a' if rho is None else f'{rho:.2f}'} over {len(complete)} completed "
              f"trials ({args.trials} asked).", ""]
    write_results("RESULTS-logme.md", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
