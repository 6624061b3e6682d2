"""Small, deliberately imbalanced demo datasets that need no download.

``textures`` (what `make demo` searches): eight classes of real photographs that ship
inside scikit-image (brick, grass, gravel, the moon's surface, the Hubble deep field,
a tissue stain, a retina, coins), cut into non-overlapping tiles, each tile in grey
with its own brightness, contrast, flip and rotation, so that neither colour nor
position says the class: texture does. That is where pretrained features matter: a
logistic regression on raw pixels does poorly, ImageNet features do well.

``digits``: scikit-learn's bundled handwritten digits (1,797 8x8 images), upsampled
to RGB PNGs as dark ink on light paper with a random tint per image (colour says
nothing about the class). Easy for raw pixels.

In both, class ``k`` of ``n`` keeps a fraction ``keep_last ** (k / (n - 1))`` of its
images (about 8:1 for digits, 4:1 for textures), so imbalance remedies matter.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from tlsearch.options import KINDS

__all__ = ["KINDS", "MARKER", "TEXTURES", "DemoDataError", "write_demo_data"]

#: Written into the demo folder; its presence lets a later run overwrite the folder.
MARKER = ".tlsearch-demo.json"
_KEEP_LAST = 0.12  # fraction of digit 9 kept
_KEEP_LAST_TEXTURE = 0.25
_TILE = 40  # source pixels per texture tile (photos scaled to a 512-pixel short side)
_IMAGE_NAME = re.compile(r"^\d+\.png$")
#: Texture class -> the scikit-image sample photo it is cut from (all ship in the wheel).
TEXTURES = {"brick": "brick", "grass": "grass", "gravel": "gravel", "moon": "moon",
            "stars": "hubble_deep_field", "tissue": "immunohistochemistry",
            "retina": "retina", "coins": "coins"}


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


def _texture_tiles(photo: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Non-overlapping grey tiles of one photo, each with its own look (uint8)."""
    from skimage import data as skdata

    img = Image.fromarray(getattr(skdata, photo)()).convert("L")
    scale = 512 / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)),
                     Image.Resampling.BICUBIC)
    grey = np.asarray(img, dtype=np.float32)
    tiles = []
    for y in range(0, grey.shape[0] - _TILE + 1, _TILE):
        for x in range(0, grey.shape[1] - _TILE + 1, _TILE):
            tile = grey[y:y + _TILE, x:x + _TILE]
            tile = (tile - tile.mean()) * rng.uniform(0.6, 1.4) + rng.uniform(90, 170)
            tile = np.rot90(tile, int(rng.integers(4)))
            tiles.append(np.clip(tile[:, ::-1] if rng.random() < 0.5 else tile, 0, 255))
    return tiles


def _png(gray: np.ndarray, size: int) -> bytes:
    img = Image.fromarray(np.round(gray).astype(np.uint8), mode="L")
    img = img.resize((size, size), Image.Resampling.BICUBIC).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _texture_images(size: int, seed: int) -> dict[str, dict[int, bytes]]:
    try:
        import skimage  # noqa: F401
    except ImportError:
        raise DemoDataError("the textures demo needs scikit-image (pip install scikit-image); "
                            "or use --kind digits") from None
    rng = np.random.default_rng(seed)
    out: dict[str, dict[int, bytes]] = {}
    for k, (label, photo) in enumerate(TEXTURES.items()):
        tiles = _texture_tiles(photo, rng)
        keep = max(1, round(len(tiles) * _KEEP_LAST_TEXTURE ** (k / (len(TEXTURES) - 1))))
        chosen = sorted(int(i) for i in rng.choice(len(tiles), size=keep, replace=False))
        out[label] = {i: _png(tiles[i], size) for i in chosen}
    return out


def _digit_images(size: int, seed: int) -> dict[str, dict[int, bytes]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, targets = digits.images, digits.target
    rng = np.random.default_rng(seed)
    kept: dict[str, list[int]] = {}
    for k in range(10):
        members = np.flatnonzero(targets == k)
        keep = max(1, round(len(members) * _KEEP_LAST ** (k / 9)))
        kept[str(k)] = sorted(int(i) for i in rng.choice(members, size=keep, replace=False))
    tints = rng.uniform(size=(len(images), 2, 3))  # per image: ink, paper
    return {label: {i: _render(images[i], size, tints[i, 0] * 110, 190 + tints[i, 1] * 65)
                    for i in idx} for label, idx in kept.items()}


def write_demo_data(out_dir: Path, *, size: int = 64, seed: int = 0,
                    kind: str = "digits") -> dict:
    """Write a demo dataset as ``out_dir/<class>/<index>.png``.

    Deterministic: the same `size` and `seed` give the same files, byte for byte.
    Rewriting a previous demo folder is allowed; images of an earlier run that are
    not part of this one are removed (nothing else is touched).

    Args:
        out_dir: Destination folder; created if missing.
        size: Image height and width in pixels.
        seed: Chooses the kept images and their tints (textures: their look).
        kind: ``digits`` or ``textures`` (see the module docstring).

    Returns:
        ``{"path", "classes", "counts", "total", "size", "seed"}``.

    Raises:
        DemoDataError: `out_dir` is a file, or a non-empty folder that is not a demo,
            or `size` is below 8.
    """
    if size < 8:
        raise DemoDataError(f"size must be >= 8, got {size}")
    if kind not in KINDS:
        raise DemoDataError(f"unknown demo kind {kind!r}; known: {', '.join(KINDS)}")
    out_dir = Path(out_dir)
    _check_target(out_dir)
    images = _texture_images(size, seed) if kind == "textures" else _digit_images(size, seed)
    classes = list(images)

    out_dir.mkdir(parents=True, exist_ok=True)
    # The marker goes first so that a crashed run can be rerun over its own leftovers.
    marker = {"tool": "tlsearch demo", "version": 1, "kind": kind, "size": size, "seed": seed}
    (out_dir / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    for old_class in out_dir.iterdir():  # classes of another kind written here before
        if old_class.is_dir() and old_class.name not in images:
            for old in old_class.iterdir():
                if _IMAGE_NAME.match(old.name) and old.is_file():
                    old.unlink()
            if not any(old_class.iterdir()):
                old_class.rmdir()
    for label in classes:
        folder = out_dir / label
        folder.mkdir(exist_ok=True)
        wanted = {f"{i}.png" for i in images[label]}
        for old in folder.iterdir():
            if _IMAGE_NAME.match(old.name) and old.name not in wanted and old.is_file():
                old.unlink()
        for i, data in images[label].items():
            path = folder / f"{i}.png"
            if not (path.is_file() and path.read_bytes() == data):
                path.write_bytes(data)
    counts = {label: len(images[label]) for label in classes}
    return {
        "path": str(out_dir),
        "classes": classes,
        "counts": counts,
        "total": sum(counts.values()),
        "size": size,
        "seed": seed,
        "kind": kind,
    }
