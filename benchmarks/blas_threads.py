"""One BLAS thread against the default for the small solves: the head, the probes, H-score.

Run:  python -m benchmarks.blas_threads [--datasets textures lfw_faces] [--seeds 0 1] [--repeats 3]

On the frozen pooled features of ImageNet EfficientNet-Lite0 at 96 px (the split a search
makes: 20 % validation, 20 % test), times each computation that runs under
`tlsearch.head.one_blas_thread` as shipped and with it replaced by a no-op (OpenBLAS's
default: one thread per core), in the same process, alternating, best of `--repeats`:
the head solve (the four-C walk, plain and class-balanced), the ranking probe, H-score
and the raw-pixel yardstick. Each pair must give the same result (checked: the solve's C and
validation predictions, whose weights differ in the last digits as the threads sum in
another order; the other jobs' scores). Writes
benchmarks/RESULTS-blas-threads.md.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import tlsearch  # noqa: F401  (native defaults)
from benchmarks import machine, write_results

BACKBONE = ("efficientnet_lite0", 96, "imagenet")


def _timed(fn, repeats: int) -> tuple[float, object]:
    from tlsearch import head

    best, value = float("inf"), None
    for _ in range(repeats):
        head._CACHE.clear()  # the solve caches by input bytes: time the solve, not a hit
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def run(dataset: str, seed: int, root: Path, cache: Path, repeats: int) -> list[dict]:
    import numpy as np

    from benchmarks.head_floor import _features
    from benchmarks.peers import write_dataset
    from tlsearch import head, rank
    from tlsearch.data import make_split, scan
    from tlsearch.duplicates import find_duplicates
    from tlsearch.pixels import pixel_probe

    data = root / dataset
    if not data.is_dir():
        write_dataset(dataset, root)
    index = scan(data, progress=False)
    split = make_split(index, val_fraction=0.2, test_fraction=0.2, seed=seed,
                       groups=find_duplicates(index).groups())
    f = _features(data, split, *BACKBONE, cache)
    (xt, yt), (xv, yv) = f["train"], f["val"]
    k = len(split.classes)

    def solve(balanced: bool):
        def fit():  # its C and validation predictions: the weights differ in rounding
            solved = head.solve_linear_head(xt, yt, xv, yv, k, balanced=balanced)
            logits = (xv - solved.mean) / solved.variance**0.5 @ solved.kernel + solved.bias
            return np.concatenate([[solved.C], logits.argmax(1)])
        return fit

    jobs = {"head solve (4 C)": solve(False), "head solve, balanced": solve(True),
            "ranking probe": lambda: rank._probe(xt, yt, xv, yv),
            "H-score": lambda: rank.h_score(xt, yt),
            "pixel yardstick": lambda: pixel_probe(data, split, "balanced_accuracy")["val"]}
    shipped = head.one_blas_thread
    rows = []
    for name, fn in jobs.items():
        times = {}
        values = {}
        for arm in ("one", "default", "one", "default"):  # alternating: drift hits both
            head.one_blas_thread = shipped if arm == "one" else contextlib.nullcontext
            try:
                t, values[arm] = _timed(fn, repeats)
            finally:
                head.one_blas_thread = shipped
            times[arm] = min(t, times.get(arm, t))
        same = bool(np.allclose(values["one"], values["default"], rtol=1e-4, atol=1e-6))
        rows.append({"dataset": dataset, "seed": seed, "n_train": len(yt), "d": xt.shape[1],
                     "job": name, "one_s": times["one"], "default_s": times["default"],
                     "same": same})
        print(f"{dataset} seed {seed} {name}: one thread {times['one']:.3f} s, default "
              f"{times['default']:.3f} s ({times['default'] / times['one']:.1f}x), "
              f"same result: {same}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["textures", "lfw_faces"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "tlsearch-head-floor-features")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="tlsearch-blas-"))
    rows = [row for dataset in args.datasets for seed in args.seeds
            for row in run(dataset, seed, root, args.cache, args.repeats)]
    command = "python -m benchmarks.blas_threads " + " ".join(argv if argv is not None
                                                              else sys.argv[1:])
    from threadpoolctl import threadpool_info

    blas = ", ".join(sorted({f"{i['internal_api']} {i.get('version')} ({i['num_threads']} "
                             "threads)" for i in threadpool_info()
                             if i["user_api"] == "blas"}))
    lines = ["## Figures", "", f"Command: `{command.strip()}`",
             f"Machine: {machine()}; BLAS: {blas}. Best of {args.repeats} per arm, "
             "arms alternated twice.", "",
             "| dataset | seed | train images | d | job | one BLAS thread s | default s "
             "| ratio | same result |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['seed']} | {r['n_train']} | {r['d']} | {r['job']} "
              f"| {r['one_s']:.3f} | {r['default_s']:.3f} "
              f"| {r['default_s'] / r['one_s']:.1f}x | {'yes' if r['same'] else '**no**'} |"
              for r in rows]
    out = write_results("RESULTS-blas-threads.md", lines)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
