"""Trials per hour with 1 vs N worker processes on one study (`--workers`).

Run:  python -m benchmarks.workers_speed [--trials 12] [--workers 2]

Same demo data, same space (MobileNetV3Small at 64 px with the bundled weights, head-only
or one unfrozen block), same seed, pruning off so every trial runs its full budget. The
frozen-prefix cache is warmed first by a separate study, so both runs measure training,
not the one-off prefix pass. Wall time includes starting the worker processes: a user
pays it too. Figures are from one run on one machine; see benchmarks/RESULTS-workers.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SPACE = """\
name: bench-workers
backbones:
  mobilenet_v3_small: [64]
unfreeze_blocks: [0, 1]
bn_mode: frozen
head_lr: {low: 1.0e-3, high: 3.0e-2, log: true}
backbone_lr_ratio: 0.1
head_epochs: 4
finetune_epochs: 2
batch_size: 32
augmentation: none
imbalance: class_weight
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("TLSEARCH_OFFLINE", "1")

    from benchmarks import demo_with_space, write_results
    from tlsearch.study import SearchConfig, run_search
    from tlsearch.workers import run_workers

    data, space = demo_with_space("tlsearch-bench-workers-", SPACE)
    tmp = data.parent

    def config(study: str, trials: int) -> SearchConfig:
        return SearchConfig(data_dir=str(data), space=str(space), study=study,
                            out=str(tmp / "studies"), trials=trials, weights="auto",
                            cache_dir=str(tmp / "cache"), pruner="none", seed=0)

    run_search(config("warm", 4))  # fills the prefix cache for both cut points

    def epochs_of(outcome_dir: Path) -> int:
        import json

        total = 0
        for result in outcome_dir.glob("trials/*/result.json"):
            total += len(json.loads(result.read_text()).get("history", []))
        return total

    rows = []
    for workers in (1, args.workers):
        name = f"w{workers}"
        t0 = time.perf_counter()
        if workers == 1:
            outcome = run_search(config(name, args.trials))
        else:
            outcome = run_workers(config(name, args.trials), workers)
        seconds = time.perf_counter() - t0
        done = outcome.counts.get("complete", 0)
        epochs = epochs_of(tmp / "studies" / name)
        rows.append((workers, seconds, done, epochs))
        print(f"{workers} worker(s): {done} trials, {epochs} trial-epochs in {seconds:.0f}s = "
              f"{done * 3600 / seconds:.0f} trials/h, {epochs * 3600 / seconds:.0f} "
              f"trial-epochs/h", flush=True)

    base = rows[0][2] / rows[0][1]
    lines = [
        "# Parallel workers: trials per hour, 1 vs N workers on one study",
        "",
        f"Command: `python -m benchmarks.workers_speed --trials {args.trials} "
        f"--workers {args.workers}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}; mobilenet_v3_small at 64 px, bundled weights, demo "
        "data, pruning off, prefix cache warm.",
        "",
        "| workers | trials | trial-epochs | wall s | trials/h | trial-epochs/h | vs 1 worker |",
        "|---|---|---|---|---|---|---|",
    ]
    for workers, seconds, done, epochs in rows:
        lines.append(f"| {workers} | {done} | {epochs} | {seconds:.0f} | "
                     f"{done * 3600 / seconds:.0f} | {epochs * 3600 / seconds:.0f} | "
                     f"{(done / seconds) / base:.2f}x |")
    out = write_results("RESULTS-workers.md", lines)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
