"""Trials per hour with 1 vs N worker processes on one study (`--workers`).

Run:  python -m benchmarks.workers_speed [--trials 12] [--workers 2]

Same demo data, same space (head-only or one unfrozen block of one backbone: the
ImageNet EfficientNet-Lite0 at 96 px by default, or `--backbone mobilenet_v3_small`, the
bundled self-pretrained one at 64 px), same seed, pruning off so every trial runs its
full budget, and no baseline recipes: the fastai recipe (every block, BN adapted, 7
epochs) alone runs 150-200 s, about 30 times a sampled trial, so with it in the study one
worker spends the run on it while the other finishes everything else and waits; the
wall time then measures that one trial, not the workers (RESULTS-workers.md, first run).
The frozen-prefix cache is warmed first by a separate study, so both runs
measure training, not the one-off prefix pass. Both go through `run_workers`, as
`tlsearch search --workers N` does (one worker too), so both pay the same process
start-up: wall time includes it, a user pays it too. Per run the script also prints the
start-up (start to the first trial's start) and the busy share (the trials' summed
durations over workers × wall): what is left is start-up, admission and bookkeeping
between trials; and the cores used (the workers' CPU seconds over wall): what one worker
leaves of the machine is all a second one can add. Figures are from one run on one
machine; see RESULTS-workers.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SPACE = """\
name: bench-workers
backbones:
  {backbone}: [{size}]
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
#: backbone -> (image size, weights) the benchmark searches it at.
BACKBONES = {"efficientnet_lite0": (96, "imagenet"), "mobilenet_v3_small": (64, "auto")}


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished worker processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _utilisation(study_dir: Path, t0_wall: float, workers: int, seconds: float
                 ) -> tuple[float, float]:
    """(seconds from start to the first trial's start, busy share of workers × wall)."""
    import optuna

    from tlsearch.search import load_config, open_study

    handle = open_study(load_config(study_dir), create=False)
    trials = [t for t in handle.study.get_trials(deepcopy=False)
              if t.datetime_start is not None and t.datetime_complete is not None
              and t.state == optuna.trial.TrialState.COMPLETE]
    first = min(t.datetime_start.timestamp() for t in trials)
    busy = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
    return first - t0_wall, busy / (workers * seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="efficientnet_lite0")
    args = parser.parse_args()
    size, weights = BACKBONES[args.backbone]
    os.environ.setdefault("TLSEARCH_OFFLINE", "1")

    from benchmarks import demo_with_space, machine, write_results
    from tlsearch.search import SearchConfig, run_search, run_workers

    space_yaml = SPACE.replace("{backbone}", args.backbone).replace("{size}", str(size))
    data, space = demo_with_space("tlsearch-bench-workers-", space_yaml)
    tmp = data.parent

    def config(study: str, trials: int) -> SearchConfig:
        return SearchConfig(data_dir=str(data), space=str(space), study=study,
                            out=str(tmp / "studies"), trials=trials, weights=weights,
                            cache_dir=str(tmp / "cache"), pruner="none", seed=0,
                            baselines=False)

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
        t0, wall0, cpu0 = time.perf_counter(), time.time(), _children_cpu()
        outcome = run_workers(config(name, args.trials), workers)
        seconds = time.perf_counter() - t0
        cores = (_children_cpu() - cpu0) / seconds
        done = outcome.counts.get("complete", 0)
        epochs = epochs_of(tmp / "studies" / name)
        startup, busy = _utilisation(tmp / "studies" / name, wall0, workers, seconds)
        rows.append((workers, seconds, done, epochs, startup, busy, cores))
        print(f"{workers} worker(s): {done} trials, {epochs} trial-epochs in {seconds:.0f}s = "
              f"{done * 3600 / seconds:.0f} trials/h, {epochs * 3600 / seconds:.0f} "
              f"trial-epochs/h; start-up {startup:.1f}s, busy {busy:.0%}, "
              f"{cores:.2f} cores used", flush=True)

    base = rows[0][2] / rows[0][1]
    lines = [
        "# Parallel workers: trials per hour, 1 vs N workers on one study",
        "",
        f"Command: `python -m benchmarks.workers_speed --trials {args.trials} "
        f"--workers {args.workers} --backbone {args.backbone}`",
        f"Machine: {machine()}, Python "
        f"{platform.python_version()}; {args.backbone} at {size} px, {weights} weights, "
        "demo data, pruning off, prefix cache warm; both runs through `run_workers`.",
        "",
        "| workers | trials | trial-epochs | wall s | trials/h | trial-epochs/h | vs 1 worker "
        "| start-up s | busy share | cores used |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for workers, seconds, done, epochs, startup, busy, cores in rows:
        lines.append(f"| {workers} | {done} | {epochs} | {seconds:.0f} | "
                     f"{done * 3600 / seconds:.0f} | {epochs * 3600 / seconds:.0f} | "
                     f"{(done / seconds) / base:.2f}x | {startup:.1f} | {busy:.0%} | "
                     f"{cores:.2f} |")
    out = write_results("RESULTS-workers.md", lines)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
