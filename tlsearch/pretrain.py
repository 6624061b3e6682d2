"""Pretrain the bundled backbone offline, on photos that ship inside installed packages.

ImageNet weights cannot always be downloaded, and a randomly initialised backbone is
useless as a frozen feature extractor: its activations shrink to ~1e-10 through the
depth of the network, so a head trained on them learns nothing (a linear probe on the
raw features scores at chance). This script trains MobileNetV3Small on a source task
built only from sample photos bundled with scikit-image and scikit-learn -- never on
the demo's digits: **which region of which photo** a random crop comes from (20
photos, a 4x4 grid over each: 320 classes). Crops have random position, scale and
aspect, are resized to the input size, flipped left-right, sometimes made gray and
given random contrast and brightness, so colour alone does not solve the task.

Everything is deterministic: crops come from a seeded `numpy.random.Generator`, Keras
and TensorFlow are seeded and run with op determinism, and training runs a fixed
number of steps (never "as many as fit in N minutes"). After training, the BatchNorm
moving statistics are recomputed on fresh source crops. The backbone, without the
head, is saved in Keras 3 ``.weights.h5`` format and loads with
``build_backbone(get_spec("mobilenet_v3_small"), size, PATH)``. A provenance JSON next
to it records the command, source photos, seed, versions, the source-task accuracy
and linear-probe scores on the demo data against random initialisation.

Run::

    python -m tlsearch.pretrain --out tlsearch/assets/mobilenet_v3_small.tlsearch.weights.h5
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "BACKBONE",
    "DEFAULT_STEPS",
    "GRID",
    "PROBE_PROTOCOL",
    "SOURCE_IMAGES",
    "STEPS_PER_MINUTE",
    "linear_probe_score",
    "load_source_images",
    "main",
    "pixel_probe_score",
    "pretrain",
    "provenance_path",
    "sample_crops",
]

BACKBONE = "mobilenet_v3_small"

#: The source photos: ``(package, name)``. scikit-image names are `skimage.data`
#: loaders whose files ship in the wheel (no pooch download); scikit-learn names are
#: the files of `sklearn.datasets.load_sample_images`. `cat` is left out (it is
#: `chelsea` again), as are drawings, masks and tiny images.
SOURCE_IMAGES: tuple[tuple[str, str], ...] = (
    ("skimage", "astronaut"),
    ("skimage", "brick"),
    ("skimage", "camera"),
    ("skimage", "cell"),
    ("skimage", "chelsea"),
    ("skimage", "clock"),
    ("skimage", "coffee"),
    ("skimage", "coins"),
    ("skimage", "grass"),
    ("skimage", "gravel"),
    ("skimage", "hubble_deep_field"),
    ("skimage", "immunohistochemistry"),
    ("skimage", "moon"),
    ("skimage", "page"),
    ("skimage", "retina"),
    ("skimage", "rocket"),
    ("skimage", "stereo_motorcycle"),
    ("skimage", "text"),
    ("sklearn", "china.jpg"),
    ("sklearn", "flower.jpg"),
)

#: Source-task classes: a GRID x GRID grid of regions over each photo.
GRID = 4
#: Training steps of the committed weights (batch 64 at 64 px).
DEFAULT_STEPS = 2400
#: Steps that fit in one minute on 2 CPU cores at 64 px; ``--minutes`` uses this fixed
#: rate, so the step count (and the result) never depends on the actual clock.
STEPS_PER_MINUTE = 300
BATCH_SIZE = 64
LEARNING_RATE = 2e-3
#: Crop side as a fraction of the photo's shorter side.
CROP_SCALE = (0.08, 0.6)
GRAYSCALE_P = 0.3
#: Photos are first resized so that their shorter side is this long.
SOURCE_SIDE = 384
_BN_MOMENTUM = 0.99  # Keras's MobileNetV3 uses 0.999: too slow for a few thousand steps

PROBE_PROTOCOL = (
    "demo data (tlsearch.demo.write_demo_data, size=64, seed=0: 775 images, 10 imbalanced "
    "classes); tlsearch.data.scan + make_split(val_fraction=0.3, seed=0); decode_image "
    "at the backbone size; frozen backbone in inference mode on raw 0-255 RGB, global "
    "average pooling; StandardScaler (standardized) or nothing (raw) + "
    "LogisticRegression(max_iter=2000) fitted on train; balanced accuracy on val"
)


# -- source images and crops ------------------------------------------------------------


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.dtype != np.uint8:
        image = np.clip(np.round(image * (255.0 if image.max() <= 1.0 else 1.0)), 0, 255)
        image = image.astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def _load_one(package: str, name: str) -> np.ndarray:
    if package == "skimage":
        from skimage import data

        image = getattr(data, name)()
        if isinstance(image, tuple):  # stereo pairs: the left view
            image = image[0]
        return image
    if package == "sklearn":
        from sklearn.datasets import load_sample_images

        bunch = load_sample_images()
        for filename, image in zip(bunch.filenames, bunch.images, strict=True):
            if Path(filename).name == name:
                return image
        raise ValueError(f"scikit-learn has no sample image {name!r}")
    raise ValueError(f"unknown source package {package!r}")


def load_source_images(
    sources: Sequence[tuple[str, str]] = SOURCE_IMAGES, *, side: int = SOURCE_SIDE
) -> list[np.ndarray]:
    """The source photos as uint8 RGB arrays, shorter side resized to `side`."""
    from PIL import Image

    out = []
    for package, name in sources:
        image = Image.fromarray(_to_rgb_uint8(_load_one(package, name)))
        scale = side / min(image.size)
        new = (max(side, round(image.width * scale)), max(side, round(image.height * scale)))
        image = image.resize(new, Image.Resampling.BICUBIC, reducing_gap=None)
        out.append(np.asarray(image, dtype=np.uint8))
    return out


def sample_crops(
    images: Sequence[np.ndarray],
    n: int,
    size: int,
    rng: np.random.Generator,
    *,
    grid: int = GRID,
    scale: tuple[float, float] = CROP_SCALE,
    grayscale_p: float = GRAYSCALE_P,
) -> tuple[np.ndarray, np.ndarray]:
    """Random augmented crops and their source-task labels.

    A crop has a random position, side (`scale` times the photo's shorter side) and
    aspect (3/4 to 4/3); it is resized to ``size x size``, flipped left-right with
    probability 1/2, turned gray with probability `grayscale_p` and given random
    contrast and brightness. Crops are never rotated: orientation is information
    that later tasks need (a rotation-invariant source task made the features much
    worse on the digits).

    Returns:
        ``(crops, labels)``: float32 ``(n, size, size, 3)`` raw 0-255 RGB, and the
        region the crop's centre lies in, ``(photo * grid + row) * grid + column``
        of a ``grid x grid`` grid over its photo.
    """
    from PIL import Image

    crops = np.empty((n, size, size, 3), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    photos = rng.integers(0, len(images), n)
    gray = np.array([[0.299], [0.587], [0.114]], np.float32)
    for i, photo in enumerate(photos):
        image = images[photo]
        h, w = image.shape[:2]
        side = rng.uniform(*scale) * min(h, w)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = int(np.clip(round(side * np.sqrt(aspect)), 8, h))
        cw = int(np.clip(round(side / np.sqrt(aspect)), 8, w))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = Image.fromarray(image[y : y + ch, x : x + cw])
        crop = crop.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
        pixels = np.asarray(crop, dtype=np.float32)
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        if rng.random() < grayscale_p:
            pixels = np.repeat(pixels @ gray, 3, axis=-1)
        contrast, brightness = rng.uniform(0.6, 1.4), rng.uniform(-40, 40)
        mean = pixels.mean()
        crops[i] = np.clip((pixels - mean) * contrast + mean + brightness, 0, 255)
        row, col = int((y + ch / 2) / h * grid), int((x + cw / 2) / w * grid)
        labels[i] = (photo * grid + row) * grid + col
    return crops, labels


# -- the linear probe -------------------------------------------------------------------


def _features(backbone, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    out = []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size], dtype=np.float32)
        out.append(np.asarray(backbone(batch, training=False)).mean(axis=(1, 2)))
    return np.concatenate(out).astype(np.float64)


def _probe_data(data_dir: Path, size: int) -> tuple[np.ndarray, ...]:
    from tlsearch.data import decode_image, make_split, scan

    index = scan(data_dir)
    split = make_split(index, val_fraction=0.3, seed=0)
    x = {part: np.stack([decode_image(data_dir / path, size) for path in split.paths(part)])
         for part in ("train", "val")}
    return x["train"], split.labels("train"), x["val"], split.labels("val")


def _demo_arrays(size: int, data_dir: str | Path | None) -> tuple[np.ndarray, ...]:
    if data_dir is not None:
        return _probe_data(Path(data_dir), size)
    from tlsearch.demo import write_demo_data

    with tempfile.TemporaryDirectory(prefix="tlsearch-probe-") as tmp:
        write_demo_data(Path(tmp) / "demo", size=64)
        return _probe_data(Path(tmp) / "demo", size)


def _fit_score(f_train, y_train, f_val, y_val, *, standardize: bool) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [StandardScaler()] if standardize else []
    probe = make_pipeline(*steps, LogisticRegression(max_iter=2000))
    probe.fit(f_train, y_train)
    return float(balanced_accuracy_score(y_val, probe.predict(f_val)))


def linear_probe_score(
    weights: str,
    *,
    size: int = 64,
    seed: int = 0,
    data_dir: str | Path | None = None,
    standardize: bool = True,
) -> float:
    """Balanced accuracy of a linear probe on frozen MobileNetV3Small features.

    The protocol is `PROBE_PROTOCOL`: the demo digits (written to a temporary folder
    unless `data_dir` is given), a 70/30 stratified split with seed 0, global-average
    pooled features of the backbone in inference mode, optionally standardized, then
    a logistic regression fitted on train and scored on val.

    Note that Keras's random initialisation makes the features tiny (~1e-10) and
    nearly a linear function of the pixels: standardized, they probe about as well as
    the pixels themselves (`pixel_probe_score`); raw, as a trained head sees them,
    they probe at chance.

    Args:
        weights: ``"none"`` (random init), ``"imagenet"`` or a path to a weights file.
        size: Image and backbone input size.
        seed: Seed of the random initialisation.
        data_dir: A flat data folder to probe instead of the demo data.
        standardize: Standardize the features before the logistic regression.

    Returns:
        Balanced accuracy on the validation part, in [0, 1].
    """
    from tlsearch.backbones import build_backbone, get_spec

    x_train, y_train, x_val, y_val = _demo_arrays(size, data_dir)
    backbone = build_backbone(get_spec(BACKBONE), size, weights, seed=seed)
    return _fit_score(_features(backbone, x_train), y_train, _features(backbone, x_val), y_val,
                      standardize=standardize)


def pixel_probe_score(*, size: int = 64, data_dir: str | Path | None = None) -> float:
    """The same probe on standardized raw pixels: what no backbone at all gives."""
    x_train, y_train, x_val, y_val = _demo_arrays(size, data_dir)
    flat = [x.reshape(len(x), -1).astype(np.float64) for x in (x_train, x_val)]
    return _fit_score(flat[0], y_train, flat[1], y_val, standardize=True)


# -- pretraining ------------------------------------------------------------------------


def _build_models(size: int, n_classes: int, seed: int):
    import keras

    from tlsearch.backbones import build_backbone, get_spec

    backbone = build_backbone(get_spec(BACKBONE), size, "none", seed=seed)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = _BN_MOMENTUM
    inputs = keras.Input((size, size, 3), name="crop_rgb_0_255")
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(inputs))
    logits = keras.layers.Dense(n_classes, name="region")(pooled)
    return backbone, keras.Model(inputs, logits, name="pretrainer")


def _recalibrate_bn(backbone, images, size: int, rng: np.random.Generator, *,
                    batches: int = 40, batch_size: int = 128) -> None:
    """Set every BatchNorm's moving statistics to the average over fresh source crops.

    Moving averages lag behind weights that are still changing, and the inference-mode
    backbone is what every later user runs. Momentum ``k / (k + 1)`` at batch k makes
    the moving value the exact mean of the batch statistics. Only source crops are
    used, never the demo data.
    """
    import keras

    layers = [lay for lay in backbone.layers if isinstance(lay, keras.layers.BatchNormalization)]
    saved = [lay.momentum for lay in layers]
    try:
        for k in range(batches):
            for layer in layers:
                layer.momentum = k / (k + 1)
            crops, _ = sample_crops(images, batch_size, size, rng)
            backbone(crops, training=True)
    finally:
        for layer, momentum in zip(layers, saved, strict=True):
            layer.momentum = momentum


def pretrain(
    out: str | Path,
    *,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    size: int = 64,
    eval_crops: int = 2048,
    log_every: int = 100,
    log=print,
) -> dict:
    """Train the backbone on the source task and save it, without the head, to `out`.

    Deterministic for a given seed, size and step count (on the same software stack):
    crops come from ``numpy.random.default_rng([seed, 0])``, Keras is seeded and
    TensorFlow runs with op determinism.

    Returns:
        ``{"steps", "train_seconds", "classes", "source_accuracy"}``; the accuracy is
        measured on crops from a separate random stream, in inference mode.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    images = load_source_images()
    n_classes = len(images) * GRID * GRID
    backbone, model = _build_models(size, n_classes, seed)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps, warmup_target=LEARNING_RATE, warmup_steps=max(1, steps // 20)
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    log(f"pretraining {BACKBONE} at {size}px: {len(images)} photos x {GRID}x{GRID} regions "
        f"= {n_classes} classes, {steps} steps of {BATCH_SIZE}")
    rng = np.random.default_rng([seed, 0])
    started = time.monotonic()
    running = None
    for step in range(1, steps + 1):
        crops, labels = sample_crops(images, BATCH_SIZE, size, rng)
        loss = float(model.train_on_batch(crops, labels))
        running = loss if running is None else 0.95 * running + 0.05 * loss
        if step % log_every == 0 or step == steps:
            elapsed = time.monotonic() - started
            log(f"step {step}/{steps}  loss {running:.3f}  {elapsed:.0f}s")
    _recalibrate_bn(backbone, images, size, np.random.default_rng([seed, 2]))
    seconds = time.monotonic() - started
    crops, labels = sample_crops(images, eval_crops, size, np.random.default_rng([seed, 1]))
    predicted = model.predict(crops, batch_size=128, verbose=0).argmax(-1)
    accuracy = float(np.mean(predicted == labels))
    photo_accuracy = float(np.mean(predicted // GRID**2 == labels // GRID**2))
    log(f"held-out crops: region accuracy {accuracy:.3f} (chance {1 / n_classes:.4f}), "
        f"photo accuracy {photo_accuracy:.3f} (chance {1 / len(images):.3f})")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    backbone.save_weights(str(out))
    return {
        "steps": steps,
        "train_seconds": round(seconds, 1),
        "classes": n_classes,
        "source_accuracy": {"region": round(accuracy, 4), "photo": round(photo_accuracy, 4),
                            "held_out_crops": eval_crops},
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def provenance_path(weights: str | Path) -> Path:
    """``x.tlsearch.weights.h5`` -> ``x.tlsearch.json`` (same folder)."""
    weights = Path(weights)
    stem = weights.name.removesuffix(".weights.h5").removesuffix(".h5")
    return weights.with_name(stem + ".json")


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m tlsearch.pretrain", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", required=True, type=Path, help="the .weights.h5 file to write")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"training steps of batch {BATCH_SIZE} (default {DEFAULT_STEPS})")
    parser.add_argument("--minutes", type=float, default=None,
                        help=f"set --steps for a budget on 2 CPU cores, at a fixed "
                             f"{STEPS_PER_MINUTE} steps per minute (never the real clock)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="input size in pixels (64-96)")
    parser.add_argument("--no-probe", action="store_true",
                        help="skip the linear probe on the demo data")
    args = parser.parse_args(argv)
    if args.steps is not None and args.minutes is not None:
        parser.error("give --steps or --minutes, not both")
    steps = args.steps if args.steps is not None else (
        max(1, round(args.minutes * STEPS_PER_MINUTE)) if args.minutes is not None
        else DEFAULT_STEPS
    )
    if steps < 1:
        parser.error("--steps must be >= 1")

    import keras
    import sklearn
    import tensorflow as tf

    started = time.monotonic()
    summary = pretrain(args.out, steps=steps, seed=args.seed, size=args.size)
    probe = None
    if not args.no_probe:
        scores = {}
        with tempfile.TemporaryDirectory(prefix="tlsearch-probe-") as tmp:
            from tlsearch.demo import write_demo_data

            demo = Path(tmp) / "demo"
            write_demo_data(demo, size=64)
            for key, weights, standardize in [
                ("bundled", str(args.out), True), ("random_init", "none", True),
                ("bundled_raw", str(args.out), False), ("random_init_raw", "none", False),
            ]:
                scores[key] = round(linear_probe_score(
                    weights, size=args.size, seed=args.seed, data_dir=demo,
                    standardize=standardize), 4)
            scores["pixels"] = round(pixel_probe_score(size=args.size, data_dir=demo), 4)
        print("linear probe on the demo data (balanced accuracy): " + ", ".join(
            f"{key} {value:.3f}" for key, value in scores.items()))
        probe = {
            **scores,
            "margin": round(scores["bundled"] - scores["random_init"], 4),
            "margin_raw": round(scores["bundled_raw"] - scores["random_init_raw"], 4),
            "metric": "balanced_accuracy",
            "protocol": PROBE_PROTOCOL,
            "keys": {
                "bundled, random_init": "standardized features",
                "bundled_raw, random_init_raw": "raw features (what a trained head sees)",
                "pixels": "standardized raw pixels, no backbone",
            },
        }
    doc = {
        "backbone": BACKBONE,
        "weights_file": args.out.name,
        "sha256": _sha256(args.out),
        "command": " ".join(
            ["python -m tlsearch.pretrain", "--out", str(args.out), "--steps", str(steps),
             "--seed", str(args.seed), "--size", str(args.size)]
            + (["--no-probe"] if args.no_probe else [])
        ),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seed": args.seed,
        "size": args.size,
        "steps": steps,
        "batch_size": BATCH_SIZE,
        "source_task": (
            f"which region of which photo a random crop's centre lies in ({GRID}x{GRID} "
            f"grid per photo, {summary['classes']} classes); crop side "
            f"{CROP_SCALE[0]}-{CROP_SCALE[1]} of the shorter side (photos resized to "
            f"{SOURCE_SIDE} px), aspect 3/4-4/3, left-right flip p=0.5, grayscale "
            f"p={GRAYSCALE_P}, contrast x0.6-1.4, brightness +-40, no rotation; head GAP + "
            f"Dense; Adam {LEARNING_RATE} with 5% warm-up and cosine decay; BN momentum "
            f"{_BN_MOMENTUM}, then BN statistics recomputed on 40x128 fresh crops"
        ),
        "source_images": [f"{package}:{name}" for package, name in SOURCE_IMAGES],
        "source_accuracy": summary["source_accuracy"],
        "train_seconds": summary["train_seconds"],
        "total_seconds": round(time.monotonic() - started, 1),
        "linear_probe": probe,
        "versions": {
            "python": sys.version.split()[0],
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "scikit-image": importlib.metadata.version("scikit-image"),
        },
        "cpu_threads": os.cpu_count(),
    }
    target = provenance_path(args.out)
    target.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out} and {target}")
    return doc


if __name__ == "__main__":
    main()
