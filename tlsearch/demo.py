"""A small, deliberately imbalanced demo dataset that needs no download.

The images are scikit-learn's bundled handwritten digits (1,797 8x8 images),
upsampled to RGB PNGs as dark ink on light paper with a random tint per image
(colour says nothing about the class). Digit ``k`` keeps a fraction
``_KEEP_LAST ** (k / 9)`` of its images, from all of "0" down to about 12% of "9",
an imbalance of about 8:1, so imbalance remedies matter in the search.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["MARKER", "DemoDataError", "write_demo_data"]

#: Written into the demo folder; its presence lets a later run overwrite the folder.
MARKER = ".tlsearch-demo.json"
_KEEP_LAST = 0.12  # fraction of digit 9 kept
_IMAGE_NAME = re.compile(r"^\d+\.png$")


class DemoDataError(ValueError):
    """The demo cannot be written there; the message is one line, for the user."""


def _render(digit: np.ndarray, size: int, ink: np.ndarray, paper: np.ndarray) -> bytes:
    """One 8x8 digit (values 0..16) as a ``size x size`` RGB PNG."""
    gray = Image.fromarray(np.round(digit * (255 / 16)).astype(np.uint8), mode="L")
    # Bicubic overshoots a little at strokes; clipping below keeps it in 0..255.
    alpha = np.asarray(gray.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    alpha = (alpha / 255.0)[..., None]
    rgb = np.clip(np.round(paper * (1 - alpha) + ink * alpha), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, "PNG")  # Pillow's PNGs carry no timestamp
    return buf.getvalue()


def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DemoDataError(f"{out_dir} exists and is not a folder.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MARKER).is_file():
        raise DemoDataError(
            f"{out_dir} is not empty and is not a tlsearch demo folder; "
            "choose another path or remove it."
        )


def write_demo_data(out_dir: Path, *, size: int = 64, seed: int = 0) -> dict:
    """Write the demo dataset as ``out_dir/<digit>/<index>.png``.

    Deterministic: the same `size` and `seed` give the same files, byte for byte.
    Rewriting a previous demo folder is allowed; images of an earlier run that are
    not part of this one are removed (nothing else is touched).

    Args:
        out_dir: Destination folder; created if missing.
        size: Image height and width in pixels.
        seed: Chooses the kept images and their tints.

    Returns:
        ``{"path", "classes", "counts", "total", "size", "seed"}``.

    Raises:
        DemoDataError: `out_dir` is a file, or a non-empty folder that is not a demo,
            or `size` is below 8.
    """
    from sklearn.datasets import load_digits

    if size < 8:
        raise DemoDataError(f"size must be >= 8, got {size}")
    out_dir = Path(out_dir)
    _check_target(out_dir)
    digits = load_digits()
    images, targets = digits.images, digits.target
    rng = np.random.default_rng(seed)
    classes = [str(k) for k in range(10)]

    kept: dict[str, list[int]] = {}
    for k in range(10):
        members = np.flatnonzero(targets == k)
        keep = max(1, round(len(members) * _KEEP_LAST ** (k / 9)))
        kept[str(k)] = sorted(int(i) for i in rng.choice(members, size=keep, replace=False))
    tints = rng.uniform(size=(len(images), 2, 3))  # per image: ink, paper

    out_dir.mkdir(parents=True, exist_ok=True)
    # The marker goes first so that a crashed run can be rerun over its own leftovers.
    marker = {"tool": "tlsearch demo", "version": 1, "size": size, "seed": seed}
    (out_dir / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    for label in classes:
        folder = out_dir / label
        folder.mkdir(exist_ok=True)
        wanted = {f"{i}.png" for i in kept[label]}
        for old in folder.iterdir():
            if _IMAGE_NAME.match(old.name) and old.name not in wanted and old.is_file():
                old.unlink()
        for i in kept[label]:
            ink = tints[i, 0] * 110  # dark
            paper = 190 + tints[i, 1] * 65  # light
            data = _render(images[i], size, ink, paper)
            path = folder / f"{i}.png"
            if not (path.is_file() and path.read_bytes() == data):
                path.write_bytes(data)
    counts = {label: len(kept[label]) for label in classes}
    return {
        "path": str(out_dir),
        "classes": classes,
        "counts": counts,
        "total": sum(counts.values()),
        "size": size,
        "seed": seed,
    }
