"""Do priors from past studies speed up a search? Leave one dataset out.

Run:  python -m benchmarks.priors_loo textures=DIR lfw_faces=DIR digits=DIR [--seeds 0 1]

Each DIR is a `benchmarks/transfer_demo.py --workdir DIR` folder: it holds the dataset
and the studies `imagenet-<seed>` (`tlsearch search DATA --space quick --trials 12
--seed S`). For each dataset and seed, the same command is run again with `--prior`
pointing at the *other* datasets' studies of that seed (leave-one-dataset-out: a study
never learns from its own data), and the two searches are compared:

- trials and seconds (first trial start to that trial's end) until the search reached
  its own final best validation score;
- seconds until it first reached the other search's final best (or never);
- the final best validation score and the recommendation's held-out test score.

Writes benchmarks/RESULTS-priors.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import tlsearch  # noqa: F401  (native defaults)
from benchmarks import write_results


def _timeline(study_dir: Path) -> dict:
    """Completed trials in completion order: seconds since the first start, value."""
    from optuna.trial import TrialState

    from tlsearch.search import load_config, open_study

    handle = open_study(load_config(study_dir), create=False)
    trials = handle.study.get_trials(deepcopy=False)
    start = min(t.datetime_start for t in trials if t.datetime_start)
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
                  key=lambda t: t.datetime_complete)
    points = [((t.datetime_complete - start).total_seconds(), float(t.value), t.number,
               bool(t.user_attrs.get("prior"))) for t in done]
    holdout = handle.study.user_attrs.get("holdout") or {}
    best = holdout.get("recommended")
    test = ((holdout.get("scores") or {}).get(str(best)) or {}).get("value")
    return {"points": points, "test": test, "recommended": best}


def _reach(points: list, target: float) -> tuple[int | None, float | None]:
    for i, (seconds, value, _, _) in enumerate(points, 1):
        if value >= target - 1e-12:
            return i, seconds
    return None, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", help="DATASET=DIR of transfer_demo runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()
    dirs = {k: Path(v).resolve() for k, v in (w.split("=", 1) for w in args.workdirs)}
    rows = []
    for dataset, root in dirs.items():
        data = root / ("demo" if dataset == "textures" else dataset)
        out = root / "studies"
        for seed in args.seeds:
            others = [dirs[d] / "studies" / f"imagenet-{seed}" for d in dirs if d != dataset]
            study = f"prior-{seed}"
            cmd = [sys.executable, "-m", "tlsearch.cli", "search", str(data), "--space",
                   "quick", "--study", study, "--trials", str(args.trials), "--seed",
                   str(seed), "--out", str(out), "--timeout", "1800",
                   *(x for o in others for x in ("--prior", str(o)))]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
            plain, primed = _timeline(out / f"imagenet-{seed}"), _timeline(out / study)
            row = {"dataset": dataset, "seed": seed, "priors_from": [o.parent.parent.name
                                                                    for o in others]}
            for name, run, other in (("plain", plain, primed), ("prior", primed, plain)):
                final = max(v for _, v, _, _ in run["points"])
                other_final = max(v for _, v, _, _ in other["points"])
                n, seconds = _reach(run["points"], final)
                n_other, seconds_other = _reach(run["points"], other_final)
                row[name] = {"final_val": final, "test": run["test"],
                             "trials_to_best": n, "seconds_to_best": seconds,
                             "seconds_to_other_best": seconds_other,
                             "total_seconds": run["points"][-1][0],
                             "best_from_prior": any(p and v >= final - 1e-12
                                                    for _, v, _, p in run["points"])}
            rows.append(row)
            print(json.dumps(row), flush=True)

    def cell(x, fmt="{:.0f}"):
        return "never" if x is None else fmt.format(x)

    command = ("python -m benchmarks.priors_loo " + " ".join(
        f"{k}=DIR" for k in dirs) + " --seeds " + " ".join(map(str, args.seeds)))
    lines = [
        "# Priors from past studies, leave one dataset out (issue #23)", "",
        f"Command: `{command}` (2-core CPU, offline; each DIR a `benchmarks/transfer_demo.py "
        "--workdir DIR` folder). Both searches of a row are `tlsearch search DATA --space "
        f"quick --trials {args.trials} --seed S`; *prior* adds `--prior` with the other "
        "datasets' studies of the same seed (their best 3 trials each, enqueued after the "
        "baselines). Seconds run from the first trial's start.", "",
        "| dataset | seed | final best val (plain / prior) | trials to it (plain / prior) | "
        "seconds to it (plain / prior) | prior run: seconds to plain's final best | "
        "best trial came from a prior | held-out test of the recommendation "
        "(plain / prior) | total seconds (plain / prior) |",
        "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, q = r["plain"], r["prior"]
        lines.append(
            f"| {r['dataset']} | {r['seed']} | {p['final_val']:.3f} / {q['final_val']:.3f} | "
            f"{p['trials_to_best']} / {q['trials_to_best']} | {cell(p['seconds_to_best'])} / "
            f"{cell(q['seconds_to_best'])} | {cell(q['seconds_to_other_best'])} | "
            f"{'yes' if q['best_from_prior'] else 'no'} | "
            f"{cell(p['test'], '{:.3f}')} / {cell(q['test'], '{:.3f}')} | "
            f"{p['total_seconds']:.0f} / {q['total_seconds']:.0f} |")
    lines += ["", "Raw records:", "", "```", *(json.dumps(r) for r in rows), "```", ""]
    print(f"wrote {write_results('RESULTS-priors.md', lines)}")


if __name__ == "__main__":
    main()
