"""Does storing the training prefix activations as float16 change what a trial finds?

Run:  python -m benchmarks.cache_dtype [--seeds 0 1 2] [--size 96]

On the textures demo with the real ImageNet EfficientNet-Lite0, the same trials (a
head-only solve and a 1-block fine-tune, each seed) run twice on the same split: once
with the training activations cached as float16 (the default) and once as float32
(`tlsearch.features.TRAIN_CACHE_DTYPE`); validation activations are float32 in both. Per
trial: both validation scores and the share of validation images on which the two
predict the same class. Writes benchmarks/RESULTS-cache-dtype.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()

    import tlsearch.features as features
    from tlsearch.backbones import get_spec, resolve_auto_weights
    from tlsearch.data import make_split, scan
    from tlsearch.demo import write_demo_data
    from tlsearch.features import FeatureCache
    from tlsearch.strategy import Strategy
    from tlsearch.train import run_trial
    from tlsearch.trial_data import TrialData

    tmp = Path(tempfile.mkdtemp(prefix="tlsearch-dtype-"))
    write_demo_data(tmp / "demo", kind="textures")
    split = make_split(scan(tmp / "demo"), val_fraction=0.2, seed=0)
    data = TrialData.from_split(tmp / "demo", split, tmp / "cache")
    cache = FeatureCache(tmp / "cache")
    weights = resolve_auto_weights(get_spec("efficientnet_lite0"), args.size)
    rows = []
    for seed in args.seeds:
        for name, depth in (("head only", 0), ("1-block fine-tune", 1)):
            strategy = Strategy(backbone="efficientnet_lite0", image_size=args.size,
                                weights=weights, unfreeze_blocks=depth, head_epochs=3,
                                finetune_epochs=3 if depth else 0, batch_size=32, seed=seed,
                                augmentation="light")
            out = {}
            for dtype in (np.float16, np.float32):
                features.TRAIN_CACHE_DTYPE = dtype
                out[np.dtype(dtype).name] = run_trial(strategy, data, feature_cache=cache,
                                                       reuse_backbone=True)
            features.TRAIN_CACHE_DTYPE = np.float16
            half, full = out["float16"], out["float32"]
            same = float(np.mean(half.val_probabilities.argmax(1)
                                 == full.val_probabilities.argmax(1)))
            rows.append((seed, name, half.objective, full.objective, same))
            print(rows[-1], flush=True)
    lines = ["# float16 vs float32 training activations in the prefix cache (issue #20)", "",
             f"Command: `python -m benchmarks.cache_dtype --seeds {' '.join(map(str, args.seeds))}"
             f" --size {args.size}` (2-core CPU, offline; textures demo, {len(split.train)} "
             f"train / {len(split.val)} val images; EfficientNet-Lite0, ImageNet weights, "
             f"{args.size} px, light augmentation).", "",
             "| seed | trial | val balanced accuracy, float16 | float32 | difference (points) "
             "| same predicted class |", "|---|---|---|---|---|---|"]
    for seed, name, half, full, same in rows:
        lines.append(f"| {seed} | {name} | {half:.4f} | {full:.4f} | "
                     f"{100 * (half - full):+.1f} | {100 * same:.1f}% |")
    diffs = [abs(h - f) for _, _, h, f, _ in rows]
    lines += ["", f"Largest difference: {100 * max(diffs):.1f} points; mean agreement "
              f"{100 * np.mean([r[4] for r in rows]):.1f}% of validation images.", ""]
    print(f"wrote {write_results('RESULTS-cache-dtype.md', lines)}")


if __name__ == "__main__":
    main()
