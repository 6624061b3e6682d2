"""Does the pruner judge what a strategy is? Old and new pruning steps, replayed.

Run:  python -m benchmarks.pruning_replay [--datasets textures digits] [--seeds 0 1]
      [--trials 16]

For each dataset and seed, `tlsearch search DATA --space quick --pruner none
--no-baselines` trains every trial to its end and records its learning curve. The
curves are then replayed, in the order the trials ran, through fresh Optuna studies
with tlsearch's pruners (Hyperband, median) in two step conventions:

- **old**: every epoch is a pruning step (global step 1, 2, ...), so with the quick
  space's 5 head epochs every Hyperband rung falls inside a fine-tuning trial's head
  warm-up;
- **new** (`tlsearch.search.pruning_offset`): a fine-tuning trial reports only its
  fine-tuning epochs, as steps 1, 2, ...; a head-only trial its epochs.

Per run it prints how many of the finally best configurations (the top 3 by their
full-run score) each would have killed, how many fine-tuning trials it killed before
their first fine-tuning epoch, and the epochs it spends (share of training every
trial to its end). Writes benchmarks/RESULTS-pruning.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import tlsearch  # noqa: F401  (native defaults)
from benchmarks import write_results

TOP = 3


def _search(data: Path, out: Path, study: str, seed: int, trials: int) -> list[dict]:
    cmd = [sys.executable, "-m", "tlsearch.cli", "search", str(data), "--space", "quick",
           "--study", study, "--trials", str(trials), "--seed", str(seed), "--out", str(out),
           "--pruner", "none", "--no-baselines", "--test-fraction", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    runs = []
    for path in sorted((out / study / "trials").glob("*/result.json")):
        result = json.loads(path.read_text())
        if result.get("state") != "complete":
            continue
        curve = [h["val_objective"] for h in result["history"]]
        runs.append({"number": int(path.parent.name), "strategy": result["strategy"],
                     "objective": result["objective"], "curve": curve})
    return runs


def replay(runs: list[dict], pruner_name: str, convention: str) -> dict[str, Any]:
    """Report each recorded curve to a fresh study's pruner; what it would have done."""
    import optuna

    from tlsearch.search import pruning_offset
    from tlsearch.search._storage import _make_pruner
    from tlsearch.strategy import Strategy

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    head = max(r["strategy"]["head_epochs"] for r in runs)
    tune = max(r["strategy"]["finetune_epochs"] for r in runs)
    max_resource = head + tune if convention == "old" else max(head, tune)
    study = optuna.create_study(direction="maximize",
                                pruner=_make_pruner(pruner_name, max_resource))
    best = sorted(runs, key=lambda r: r["objective"], reverse=True)[:TOP]
    killed, early, spent, full = [], 0, 0, 0
    for run in runs:
        strategy = Strategy.from_dict(run["strategy"])
        offset = pruning_offset(strategy) if convention == "new" else 0
        trial = study.ask()
        full += len(run["curve"])
        stopped = None
        for step, value in enumerate(run["curve"], 1):
            if step > offset:
                trial.report(value, step - offset)
                if step < len(run["curve"]) and trial.should_prune():
                    stopped = step
                    break
        spent += stopped or len(run["curve"])
        if stopped is None:
            study.tell(trial, run["objective"])
            continue
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        killed.append(run["number"])
        if strategy.fine_tunes and stopped <= strategy.head_epochs:
            early += 1
    return {"killed": killed, "best_killed": [r["number"] for r in best if r["number"] in killed],
            "best": [r["number"] for r in best], "finetuners": sum(
                Strategy.from_dict(r["strategy"]).fine_tunes for r in runs),
            "killed_in_warmup": early, "epochs": spent, "epochs_full": full}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["textures", "digits"],
                        choices=["textures", "digits", "lfw_faces"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--trials", type=int, default=16)
    args = parser.parse_args()

    from benchmarks.peers import write_dataset

    tmp = Path(tempfile.mkdtemp(prefix="tlsearch-pruning-"))
    out = tmp / "studies"
    out.mkdir()
    rows = []
    for dataset in args.datasets:
        data = write_dataset(dataset, tmp)
        for seed in args.seeds:
            runs = _search(data, out, f"{dataset}-{seed}", seed, args.trials)
            for pruner in ("hyperband", "median"):
                for convention in ("old", "new"):
                    row = {"dataset": dataset, "seed": seed, "pruner": pruner,
                           "convention": convention, "trials": len(runs),
                           **replay(runs, pruner, convention)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)

    command = " ".join(["python -m benchmarks.pruning_replay", "--datasets", *args.datasets,
                        "--seeds", *map(str, args.seeds), "--trials", str(args.trials)])
    lines = [
        "# Pruning steps, old and new: results", "",
        f"Command: `{command}` (2-core CPU, offline; the quick space, EfficientNet-Lite "
        "ImageNet weights, every trial trained to its end, then replayed).", "",
        f"| dataset | seed | pruner | steps | trials (fine-tuning) | top-{TOP} killed "
        "| fine-tuners killed in warm-up | trials killed | epochs spent |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['seed']} | {r['pruner']} | {r['convention']} | "
            f"{r['trials']} ({r['finetuners']}) | {len(r['best_killed'])} of {TOP} | "
            f"{r['killed_in_warmup']} | {len(r['killed'])} | "
            f"{r['epochs']} of {r['epochs_full']} ({r['epochs'] / r['epochs_full']:.0%}) |")
    lines += ["", "Raw rows:", "", "```", *(json.dumps(r) for r in rows), "```", ""]
    print(f"wrote {write_results('RESULTS-pruning.md', lines)}")


if __name__ == "__main__":
    main()
