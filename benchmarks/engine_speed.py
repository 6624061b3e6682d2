"""Cached trial engine vs the plain Keras transfer recipe, same strategy and seed.

Run:  python -m benchmarks.engine_speed [--size 96] [--epochs 3] [--rss-trials 50]

The plain recipe is the keras-io transfer-learning guide's (benchmarks/plain.py, the
same model the peer benchmark's tuners train): a frozen base called with
`training=False`, a pooled dense head, `model.fit` over the decoded images every epoch,
then (for fine-tuning) the top blocks unfrozen, recompiled at a low learning rate and
fitted again. tlsearch trains the same model on cached frozen-prefix activations.
Figures are ratios from one run on one machine; see benchmarks/RESULTS-engine.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from benchmarks import machine, write_results  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def plain_keras_trial(strategy, data) -> tuple[float, float]:
    """The guide's way (benchmarks/plain.py); returns (seconds, validation balanced accuracy)."""
    import keras
    from sklearn.metrics import balanced_accuracy_score

    from benchmarks.plain import build_plain, fit_plain, one_hot

    keras.backend.clear_session()
    keras.utils.set_random_seed(strategy.seed)
    t0 = time.perf_counter()
    x_train = np.asarray(data.images("train", strategy.image_size), dtype=np.float32)
    x_val = np.asarray(data.images("val", strategy.image_size), dtype=np.float32)
    plain = build_plain(strategy, len(data.classes), strategy.weights)
    fit_plain(plain, x_train, one_hot(data.labels("train"), len(data.classes)),
              epochs=strategy.total_epochs)
    probs = plain.model.predict(x_val, verbose=0, batch_size=128)
    return (time.perf_counter() - t0,
            float(balanced_accuracy_score(data.labels("val"), probs.argmax(1))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per phase")
    parser.add_argument("--rss-trials", type=int, default=50)
    parser.add_argument("--backbone", default="mobilenet_v3_small")
    args = parser.parse_args()

    from tlsearch.backbones import get_spec, resolve_auto_weights
    from tlsearch.data import make_split, scan
    from tlsearch.demo import write_demo_data
    from tlsearch.features import FeatureCache
    from tlsearch.strategy import Strategy
    from tlsearch.train import run_trial
    from tlsearch.trial_data import TrialData

    os.environ.setdefault("TLSEARCH_OFFLINE", "1")
    spec = get_spec(args.backbone)
    weights = resolve_auto_weights(spec, args.size) or "none"
    tmp = Path(tempfile.mkdtemp(prefix="tlsearch-bench-"))
    write_demo_data(tmp / "demo", size=64)
    split = make_split(scan(tmp / "demo"), val_fraction=0.3, seed=0)
    data = TrialData.from_split(tmp / "demo", split, tmp / "cache")
    data.images("train", args.size)  # decode once for both sides: we time training
    data.images("val", args.size)
    cache = FeatureCache(tmp / "cache")

    rows = []
    for depth in (0, 1, 2):
        strategy = Strategy(backbone=args.backbone, image_size=args.size, weights=weights,
                            unfreeze_blocks=depth, head_epochs=args.epochs,
                            finetune_epochs=args.epochs if depth else 0, head_lr=3e-3,
                            backbone_lr=3e-4, batch_size=32, head_dropout=0.2, seed=0,
                            schedule="constant")
        run_trial(strategy, data, feature_cache=cache, reuse_backbone=True)  # warm the cache
        t0 = time.perf_counter()
        ours = run_trial(strategy, data, feature_cache=cache, reuse_backbone=True)
        ours_s = time.perf_counter() - t0
        plain_s, plain_score = plain_keras_trial(strategy, data)
        rows.append((depth, ours_s, plain_s, ours.objective, plain_score, ours.cache))
        print(f"unfreeze={depth}: tlsearch {ours_s:.1f}s (bal.acc {ours.objective:.3f}, "
              f"cache {ours.cache}) | plain keras {plain_s:.1f}s (bal.acc {plain_score:.3f}) "
              f"| speed-up {plain_s / ours_s:.1f}x", flush=True)

    rss = []
    for i in range(args.rss_trials):
        strategy = Strategy(backbone=args.backbone, image_size=args.size, weights=weights,
                            head_epochs=1, head_lr=3e-3, seed=i)
        run_trial(strategy, data, feature_cache=cache, reuse_backbone=True)
        rss.append(rss_mb())
    rss5, rss_last = rss[min(4, len(rss) - 1)], rss[-1]
    print(f"RSS after trial 5: {rss5:.0f} MB, after trial {len(rss)}: {rss_last:.0f} MB "
          f"({(rss_last / rss5 - 1) * 100:+.1f}%)", flush=True)

    lines = [
        "# Engine benchmark: cached tlsearch trials vs the plain Keras recipe",
        "",
        f"Command: `python -m benchmarks.engine_speed --size {args.size} --epochs {args.epochs}"
        f" --rss-trials {args.rss_trials}`",
        f"Machine: {machine()}, "
        f"{platform.python_version()}; backbone {args.backbone} at {args.size}px, weights "
        f"{Path(weights).name}; demo data ({len(split.train)} train / {len(split.val)} val).",
        "",
        "| unfrozen blocks | tlsearch s/trial (cache warm) | plain Keras s/trial | speed-up "
        "| tlsearch bal.acc | plain bal.acc |",
        "|---|---|---|---|---|---|",
    ]
    for depth, ours_s, plain_s, ours_score, plain_score, _ in rows:
        lines.append(f"| {depth} | {ours_s:.1f} | {plain_s:.1f} | {plain_s / ours_s:.1f}x | "
                     f"{ours_score:.3f} | {plain_score:.3f} |")
    lines += ["", f"RSS after trial 5: {rss5:.0f} MB; after trial {len(rss)}: {rss_last:.0f} MB "
              f"({(rss_last / rss5 - 1) * 100:+.1f}%).", ""]
    out = write_results("RESULTS-engine.md", lines)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
