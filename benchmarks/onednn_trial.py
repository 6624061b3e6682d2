"""One fixed batch of trials under whatever oneDNN setting the environment gives.

Run one setting:   python -m benchmarks.onednn_trial
Compare two (what benchmarks/RESULTS-onednn.md records):
  farm-bench -n 4 --timeout 1800 \
      --vs "env TF_ENABLE_ONEDNN_OPTS=1 ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.onednn_trial" \
      -- env TF_ENABLE_ONEDNN_OPTS=0 python -m benchmarks.onednn_trial

The batch is what a search runs: a head-only trial on cached features, a trial that
fine-tunes the top two blocks and one that fine-tunes the whole backbone
(mobilenet_v3_small at 96 px, random weights: speed does not depend on their values),
on the demo digits. It prints seconds per trial; the process time is what farm-bench
compares, start-up included, since every search worker pays it too.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import tlsearch  # noqa: F401  (its native defaults, where the environment sets none)


def main() -> None:
    from tlsearch.data import make_split, scan
    from tlsearch.demo import write_demo_data
    from tlsearch.features import FeatureCache
    from tlsearch.strategy import ALL_BLOCKS, Strategy
    from tlsearch.train import run_trial
    from tlsearch.trial_data import TrialData

    tmp = Path(tempfile.mkdtemp(prefix="tlsearch-onednn-"))
    write_demo_data(tmp / "demo", size=64)
    split = make_split(scan(tmp / "demo", progress=False), val_fraction=0.3, seed=0)
    data = TrialData.from_split(tmp / "demo", split, tmp / "cache")
    cache = FeatureCache(tmp / "cache")
    setting = {k: os.environ.get(k) for k in ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA")}
    for depth in (0, 2, ALL_BLOCKS):
        strategy = Strategy(backbone="mobilenet_v3_small", image_size=96, weights="none",
                            unfreeze_blocks=depth, head_epochs=2,
                            finetune_epochs=2 if depth else 0, batch_size=32, seed=0)
        t0 = time.perf_counter()
        result = run_trial(strategy, data, feature_cache=cache, reuse_backbone=True)
        print(f"{setting} unfreeze={depth}: {time.perf_counter() - t0:.1f} s "
              f"({result.state})", flush=True)


if __name__ == "__main__":
    main()
