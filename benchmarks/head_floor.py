"""Does the head solve hold scikit-learn's floor? Like with like, on held-out test.

Run:  python -m benchmarks.head_floor [--datasets textures lfw_faces digits] [--seeds 0 1]

For each dataset (real photographs from installed packages: the textures demo,
scikit-image's faces vs non-faces, the digit demo), seed (it seeds the split, made as a
search makes it: 20 % validation, 20 % test, duplicates kept together) and backbone
(ImageNet EfficientNet-Lite0 and Lite1 from their packages, and the bundled
self-pretrained MobileNetV3Small), the frozen pooled features of every image are
computed once; then, on those same features:

- **sklearn**: `make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))`
  (C = 1) fitted on the training split — issue #24's floor;
- **solve**: `tlsearch.head.solve_linear_head`, the head every trial starts from (and
  the linear-probe recipe's), C chosen on validation by the one-standard-error rule
  (C = 1 unless another C beats it by more than the validation split's noise);
- the rules it was chosen over, on the same features: **best on validation** (ties to
  the lower validation log-loss), **old** (the best, ties to the strongest
  regularisation: the rule before), **5-fold CV** over train + validation, and **C = 1**
  fixed (scikit-learn's default, so any gap to the floor there is the solver's).

All three are scored once on the test split (balanced accuracy). Nothing is searched:
this isolates the solve; `benchmarks/transfer_demo.py` measures the recommendation and
the linear-probe recipe end to end. Writes benchmarks/RESULTS-head-floor.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import tlsearch  # noqa: F401  (native defaults)
from benchmarks import write_results

DATASETS = ("textures", "lfw_faces", "digits")
#: (backbone, size, weights): the two package ImageNet backbones and the bundled one.
BACKBONES = (("efficientnet_lite0", 96, "imagenet"), ("efficientnet_lite1", 128, "imagenet"),
             ("mobilenet_v3_small", 64, "bundled"))


def _features(data: Path, split, backbone: str, size: int, weights: str, cache: Path):
    import hashlib

    import numpy as np

    key = hashlib.sha256(repr((split.fingerprint, split.train, split.val, split.test,
                               backbone, size, weights)).encode()).hexdigest()[:16]
    path = cache / f"{backbone}-{size}-{key}.npz"
    if path.is_file():  # the frozen pass is the slow part; the rules are re-run in seconds
        z = np.load(path)
        return {part: (z[f"{part}_x"], z[f"{part}_y"]) for part in ("train", "val", "test")}
    out = _frozen_pass(data, split, backbone, size, weights)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{f"{part}_{k}": v for part, (x, y) in out.items()
                      for k, v in (("x", x), ("y", y))})
    return out


def _frozen_pass(data: Path, split, backbone: str, size: int, weights: str):
    import keras
    import numpy as np

    from tlsearch.backbones import build_backbone, get_spec
    from tlsearch.data import decode_image

    spec = get_spec(backbone)
    if weights == "bundled":
        from tlsearch.bundled import bundled_weights_path

        weights = str(bundled_weights_path(backbone))
    model = keras.Sequential([build_backbone(spec, size, weights),
                              keras.layers.GlobalAveragePooling2D()])
    out = {}
    for part in ("train", "val", "test"):
        rows = getattr(split, part)
        x = np.stack([decode_image(data / p, size) for p, _ in rows]).astype("float32")
        out[part] = (model.predict(x, batch_size=64, verbose=0), np.array([y for _, y in rows]))
    return out


def _old_ties(train, y_train, val, y_val, n_classes):
    """The rule before: every C fitted, the first (strongest) of the tied best kept."""
    from tlsearch import head

    scores = [head.solve_linear_head(train, y_train, val, y_val, n_classes, balanced=False,
                                     c_grid=(c,)) for c in head.C_GRID]
    val_scores = []
    for solved in scores:
        logits = ((val - solved.mean) / solved.variance**0.5) @ solved.kernel + solved.bias
        val_scores.append(float(_balanced(y_val, logits.argmax(1))))
    best = max(val_scores)
    return scores[val_scores.index(best)]


def _balanced(y, pred):
    from sklearn.metrics import balanced_accuracy_score

    return balanced_accuracy_score(y, pred)


def run(dataset: str, seed: int, root: Path, cache: Path) -> list[dict]:
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from benchmarks.peers import write_dataset
    from tlsearch.data import make_split, scan
    from tlsearch.duplicates import find_duplicates
    from tlsearch.head import solve_linear_head

    data = root / dataset
    if not data.is_dir():
        write_dataset(dataset, root)
    index = scan(data)
    split = make_split(index, val_fraction=0.2, test_fraction=0.2, seed=seed,
                       groups=find_duplicates(index).groups())
    n_classes = len(split.classes)
    rows = []
    for backbone, size, weights in BACKBONES:
        t0 = time.perf_counter()
        f = _features(data, split, backbone, size, weights, cache)
        (xt, yt), (xv, yv), (xs, ys) = f["train"], f["val"], f["test"]
        sk = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(xt, yt)

        def test_of(solved, xs=xs, ys=ys):
            logits = ((xs - solved.mean) / solved.variance**0.5) @ solved.kernel + solved.bias
            return float(_balanced(ys, logits.argmax(1)))

        t_solve = time.perf_counter()
        new = solve_linear_head(xt, yt, xv, yv, n_classes, balanced=False)
        t_solve = time.perf_counter() - t_solve
        t_balanced = time.perf_counter()
        solve_linear_head(xt, yt, xv, yv, n_classes, balanced=True)
        t_balanced = time.perf_counter() - t_balanced
        best = solve_linear_head(xt, yt, xv, yv, n_classes, balanced=False, rule="best")
        old = _old_ties(xt, yt, xv, yv, n_classes)
        cv = solve_linear_head(xt, yt, xv, yv, n_classes, balanced=False, folds=5)
        fixed = solve_linear_head(xt, yt, xv, yv, n_classes, balanced=False, c_grid=(1.0,))
        rows.append({
            "dataset": dataset, "seed": seed, "backbone": f"{backbone}@{size}",
            "weights": weights, "d": int(xt.shape[1]), "n_train": len(yt),
            "n_val": len(yv), "n_test": len(ys),
            "sklearn": float(_balanced(ys, sk.predict(xs))),
            "solve": test_of(new), "solve_C": new.C, "solve_val": new.val_score,
            "best": test_of(best), "best_C": best.C, "old": test_of(old), "old_C": old.C,
            "cv": test_of(cv), "cv_C": cv.C,
            "c1": test_of(fixed), "solve_s": round(t_solve, 2),
            "solve_balanced_s": round(t_balanced, 2),
            "feature_mean_abs": float(np.abs(xt).mean()), "feature_std": float(xt.std()),
            "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--features-cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "tlsearch-head-floor-features",
                        help="frozen features kept between runs (one file per split and "
                             "backbone)")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).with_name("RESULTS-head-floor.md"))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tlsearch-head-floor-"))
    rows = [r for d in args.datasets for s in args.seeds
            for r in run(d, s, root, args.features_cache)]
    command = " ".join(["python -m benchmarks.head_floor --datasets", *args.datasets,
                        "--seeds", *map(str, args.seeds)])
    rules = (("solve", "solve (1-SE rule)"), ("best", "best on validation"),
             ("old", "old: best, ties to strongest"), ("cv", "5-fold CV"), ("c1", "C = 1"))
    lines = [
        "# The head solve against scikit-learn's standardized logistic regression (issue #24)",
        "", f"Command: `{command}` (2-core CPU, offline). Balanced accuracy on each seed's "
        "held-out test split; every column of a row uses the same frozen pooled features "
        "(train: fit; validation: choose C; test: score).", "",
        "Each rule minus scikit-learn (points) over the runs: min / mean / max, and the runs "
        "within 1 point of it or above:", "",
        "| rule | min | mean | max | within 1 point |", "|---|---|---|---|---|"]
    for key, label in rules:
        d = [100 * (r[key] - r["sklearn"]) for r in rows]
        lines.append(f"| {label} | {min(d):+.1f} | {sum(d) / len(d):+.2f} | {max(d):+.1f} | "
                     f"{sum(x >= -1.0 for x in d)} of {len(d)} |")
    timed = [r for r in rows if "solve_s" in r]
    if timed:
        lines += ["", "Wall time of the default solve (every C of the grid, from an empty cache), "
                  "seconds, per seed:", "",
                  "| dataset | backbone | d | train images | plain | class-balanced |",
                  "|---|---|---|---|---|---|"]
        for name, backbone in dict.fromkeys((r["dataset"], r["backbone"]) for r in timed):
            group = [r for r in timed if (r["dataset"], r["backbone"]) == (name, backbone)]
            cells = [" / ".join(f"{r[key]:.2f}" for r in group)
                     for key in ("solve_s", "solve_balanced_s")]
            lines.append(f"| {name} | {backbone} | {group[0]['d']} | {group[0]['n_train']} | "
                         + " | ".join(cells) + " |")
    lines += ["", "| dataset | seed | backbone | weights | train/val/test | scikit-learn (C=1) | "
              + " | ".join(f"{label} (C)" for _, label in rules[:4]) + " | C = 1 |",
              "|---|---|---|---|---|---|" + "---|" * len(rules)]
    for r in rows:
        cells = [f"{r[k]:.3f} ({r[k + '_C']:g})" for k, _ in rules[:4]]
        lines.append(
            f"| {r['dataset']} | {r['seed']} | {r['backbone']} | {r['weights']} | "
            f"{r['n_train']}/{r['n_val']}/{r['n_test']} | {r['sklearn']:.3f} | "
            + " | ".join(cells) + f" | {r['c1']:.3f} |")
    lines += ["", "Raw records:", "", "```", *(json.dumps(r) for r in rows), "```", ""]
    print(f"wrote {write_results(args.out, lines)}")


if __name__ == "__main__":
    main()
