"""How the cost of a trial grows with the data: 1x, 4x and 16x the textures demo.

Run:  python -m benchmarks.data_growth [--scales 1 4 16] [--size 96]

Each scale is a folder of textures demo images written with seeds 0..k-1: the same real
scikit-image photos, each seed giving every tile its own contrast, brightness, rotation
and flip, so no file is written twice (the script checks the bytes). Each scale runs in
a fresh process (its own peak RSS) with an empty cache and measures, on the real
ImageNet EfficientNet-Lite0 at `--size` px:
- decode: reading and resizing the images (once, cached on disk for every trial);
- frozen pass: the backbone's prefix over train + val for the head-only view and for the
  1-block cut (the first trial of each fills the cache);
- per trial, cache warm: a head-only trial (the head solve) and a 1-block fine-tune;
- the cache's bytes on disk and the process's peak resident memory.
Writes benchmarks/RESULTS-data-growth.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import write_results


def write_scaled(out: Path, scale: int) -> int:
    """`scale` seeds of the textures demo in one folder; returns the image count."""
    from tlsearch.demo import write_demo_data

    seen: set[str] = set()
    for seed in range(scale):
        part = out.parent / f".seed{seed}"
        if not part.is_dir():
            write_demo_data(part, kind="textures", seed=seed)
        for png in sorted(part.glob("*/*.png")):
            blob = png.read_bytes()
            digest = hashlib.sha256(blob).hexdigest()
            if digest in seen:
                continue  # never the same file twice
            seen.add(digest)
            target = out / png.parent.name / f"s{seed}-{png.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blob)
    return len(seen)


def one_scale(root: Path, scale: int, size: int) -> dict:
    """Run in a fresh process: the measurements of one scale, as a dict."""
    from tlsearch.backbones import get_spec, resolve_auto_weights
    from tlsearch.data import make_split, scan
    from tlsearch.features import FeatureCache
    from tlsearch.strategy import Strategy
    from tlsearch.train import run_trial
    from tlsearch.trial_data import TrialData

    data_dir = root / f"x{scale}"
    images = write_scaled(data_dir, scale)
    split = make_split(scan(data_dir), val_fraction=0.2, seed=0)
    cache_dir = Path(tempfile.mkdtemp(prefix=f"tlsearch-growth-{scale}-"))
    data = TrialData.from_split(data_dir, split, cache_dir)
    cache = FeatureCache(cache_dir)
    weights = resolve_auto_weights(get_spec("efficientnet_lite0"), size)
    t0 = time.perf_counter()
    data.images("train", size)
    data.images("val", size)
    decode = time.perf_counter() - t0
    row: dict = {"scale": scale, "images": images, "train": len(split.train),
                 "val": len(split.val), "decode_s": decode}
    for name, depth in (("head", 0), ("block1", 1)):
        strategy = Strategy(backbone="efficientnet_lite0", image_size=size, weights=weights,
                            unfreeze_blocks=depth, head_epochs=3,
                            finetune_epochs=2 if depth else 0, batch_size=32, seed=0)
        cold = run_trial(strategy, data, feature_cache=cache, reuse_backbone=True)
        t0 = time.perf_counter()
        warm = run_trial(strategy, data, feature_cache=cache, reuse_backbone=True)
        row[f"{name}_trial_s"] = time.perf_counter() - t0
        row[f"{name}_frozen_pass_s"] = cold.timings.get("prefix", 0.0)
        row[f"{name}_timings"] = {k: round(v, 3) for k, v in warm.timings.items()}
        row[f"{name}_objective"] = warm.objective
    row["cache_bytes"] = FeatureCache(cache_dir).size_bytes()
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="tlsearch-growth-"))
    if args.one is not None:
        print(json.dumps(one_scale(root, args.one, args.size)), flush=True)
        return
    rows = []
    for scale in args.scales:
        done = subprocess.run([sys.executable, "-m", "benchmarks.data_growth", "--one",
                               str(scale), "--size", str(args.size), "--workdir", str(root)],
                              capture_output=True, text=True, env=dict(os.environ))
        if done.returncode != 0:
            raise SystemExit(f"scale {scale} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    lines = [
        "# Cost as the data grows (issue #20)", "",
        f"Command: `python -m benchmarks.data_growth --scales {' '.join(map(str, args.scales))}"
        f" --size {args.size}` (2-core CPU, offline; EfficientNet-Lite0, ImageNet weights, "
        f"{args.size} px; each scale in a fresh process with an empty cache).", "",
        "Per trial with the cache warm; *frozen pass* is the first trial's prefix pass over "
        "train + val (the head-only view, then the 1-block cut); ratios are against the 1x "
        "row of the same run:", "",
        "| scale | images | decode s | frozen pass s (head / 1 block) | head-only trial s "
        "| 1-block fine-tune s | per-image trial time vs 1x (head / 1 block) "
        "| cache MB | peak RSS MB (vs 1x) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per = [(r[f"{k}_trial_s"] / r["images"]) / (base[f"{k}_trial_s"] / base["images"])
               for k in ("head", "block1")]
        lines.append(
            f"| {r['scale']}x | {r['images']} | {r['decode_s']:.1f} | "
            f"{r['head_frozen_pass_s']:.1f} / {r['block1_frozen_pass_s']:.1f} | "
            f"{r['head_trial_s']:.1f} | {r['block1_trial_s']:.1f} | "
            f"{per[0]:.2f} / {per[1]:.2f} | {r['cache_bytes'] / 2**20:.0f} | "
            f"{r['peak_rss_mb']:.0f} ({r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x) |")
    lines += ["", "Where a warm trial's time goes (seconds, from the engine's own timings):",
              "", "```", *(json.dumps({"scale": r["scale"], "head": r["head_timings"],
                                       "block1": r["block1_timings"]}) for r in rows),
              "```", "", "Raw records:", "", "```", *(json.dumps(r) for r in rows), "```", ""]
    print(f"wrote {write_results('RESULTS-data-growth.md', lines)}")


if __name__ == "__main__":
    main()
