"""Image files: the reason codes a file is skipped for, the notes it may carry, and
`decode_image`, the one way a file becomes pixels (training, validation, prediction)."""

from __future__ import annotations

import errno
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

#: Pillow's own default for `Image.MAX_IMAGE_PIXELS`. Pillow still refuses, on its
#: own, anything over twice its global limit, so a larger `max_pixels` is capped there.
DEFAULT_MAX_PIXELS = 89_478_485

# Why a file is skipped (the codes in `ImageIndex.skipped`; worded in REASONS).
ZERO_BYTES = "zero_bytes"
NOT_IMAGE = "not_image"
TRUNCATED = "truncated"
DECOMPRESSION_BOMB = "decompression_bomb"
#: A header that claims giant dimensions with no pixel data behind it cannot be told
#: apart from a real decompression bomb without decoding it, which is what the limit
#: exists to avoid; both are reported as `DECOMPRESSION_BOMB`.
HUGE_HEADER = DECOMPRESSION_BOMB
UNREADABLE = "unreadable"
BROKEN_SYMLINK = "broken_symlink"
SYMLINK_LOOP = "symlink_loop"
UNDECODABLE = "undecodable"


REASONS: dict[str, str] = {
    ZERO_BYTES: "The file is empty (0 bytes).",
    NOT_IMAGE: "Not an image in a supported format (JPEG, PNG, BMP, GIF, WebP, TIFF).",
    TRUNCATED: "The image is cut short: the file ends before all of its pixels.",
    DECOMPRESSION_BOMB: (
        "The header claims more pixels than the limit (a decompression bomb, or a "
        "header with giant dimensions and no data); not decoded."
    ),
    UNREADABLE: "The file could not be read (permission denied or an I/O error).",
    BROKEN_SYMLINK: "A symbolic link whose target does not exist.",
    SYMLINK_LOOP: "A symbolic link that loops back on itself.",
    UNDECODABLE: "Pillow recognised the file but could not decode it.",
}


# What a kept file may carry (worded in NOTES).
WRONG_EXTENSION = "wrong_extension"
ANIMATED = "animated"
EXIF_ROTATED = "exif_rotated"
CMYK = "cmyk"
HIGH_BIT_DEPTH = "16bit"
PALETTE = "palette"
GRAYSCALE = "grayscale"
ALPHA = "alpha"


NOTES: dict[str, str] = {
    WRONG_EXTENSION: "The extension does not match the content (read by content).",
    ANIMATED: "Animated; only the first frame is used.",
    EXIF_ROTATED: "Rotated/flipped upright as its EXIF orientation says.",
    CMYK: "CMYK colours, converted to RGB.",
    HIGH_BIT_DEPTH: "More than 8 bits per sample, scaled down to 8 bits.",
    PALETTE: "Palette colours, converted to RGB.",
    GRAYSCALE: "Grayscale, converted to RGB.",
    ALPHA: "Transparency, composited onto a white background.",
}


#: Extensions that mark a file as a candidate image, with the formats they promise.
#: Files with any other extension are listed as ignored and never opened.
IMAGE_EXTENSIONS: dict[str, tuple[str, ...]] = {
    ".jpg": ("JPEG", "MPO"),
    ".jpeg": ("JPEG", "MPO"),
    ".jpe": ("JPEG", "MPO"),
    ".jfif": ("JPEG", "MPO"),
    ".png": ("PNG",),
    ".bmp": ("BMP",),
    ".gif": ("GIF",),
    ".webp": ("WEBP",),
    ".tif": ("TIFF",),
    ".tiff": ("TIFF",),
}


#: Formats accepted by content (Pillow's `im.format`). MPO is how Pillow names the
#: multi-picture JPEGs many cameras write.
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "GIF", "WEBP", "TIFF")


# Pillow's JPEG opener returns MPO images itself; "MPO" is not an opener name.
_OPENERS = tuple(f for f in ACCEPTED_FORMATS if f != "MPO")
#: Resizing squashes the whole image to ``size x size`` (no crop, aspect not kept)
#: with Pillow's BILINEAR filter and ``reducing_gap=None`` (exact, no JPEG draft mode).
RESIZE_METHOD = "bilinear"


RESIZE_METHODS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


_SIGNATURES = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)


_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_BACKGROUND = (255, 255, 255, 255)


class DecodeError(Exception):
    """A file could not be turned into pixels.

    Attributes:
        reason: One of the reason codes in `REASONS`.
        detail: What exactly went wrong (often Pillow's message).
        path: The file, when known.
    """

    def __init__(self, reason: str, detail: str = "", path: str | os.PathLike | None = None):
        self.reason = reason
        self.detail = detail
        self.path = None if path is None else os.fspath(path)
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class _Decoded:
    image: Image.Image  # RGB, full resolution
    width: int
    height: int
    mode: str
    format: str
    notes: tuple[str, ...]


def _read_file(path: str | os.PathLike) -> bytes:
    """Return a regular file's bytes, or raise DecodeError with the reason."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise DecodeError(BROKEN_SYMLINK, f"-> {os.readlink(path)}", path) from None
        raise DecodeError(UNREADABLE, "no such file", path) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DecodeError(SYMLINK_LOOP, "too many levels of symbolic links", path) from None
        raise DecodeError(UNREADABLE, exc.strerror or str(exc), path) from None
    # A FIFO or device named like an image would block or stream forever.
    if not stat.S_ISREG(st.st_mode):
        raise DecodeError(UNREADABLE, "not a regular file", path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DecodeError(UNREADABLE, exc.strerror or str(exc), path) from None
    if not data:
        raise DecodeError(ZERO_BYTES, "", path)
    return data


def _png_header_pixels(data: bytes) -> int | None:
    """Pixel count from a PNG IHDR, for files cut off before Pillow can identify them."""
    if data.startswith(_SIGNATURES[0]) and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big")
    return None


def _looks_like_image(data: bytes) -> bool:
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _is_truncation(exc: BaseException) -> bool:
    # Pillow has no dedicated exception; these are its messages for data that ends
    # early ("cannot load this image" is a header with no tile data at all).
    text = str(exc).lower()
    return isinstance(exc, EOFError) or "truncated" in text or "cannot load this image" in text


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # broken EXIF is ignored, identically at scan and decode time
        return 1


def _to_8bit(im: Image.Image) -> Image.Image:
    """Scale 16-bit (and 32-bit integer) samples to 0..255 instead of clipping."""
    arr = np.asarray(im)
    # Mode "I" holds 16-bit PNG/TIFF data in Pillow; larger values are clipped.
    arr = np.clip(arr.astype(np.int64), 0, 65535)
    return Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8), mode="L")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any supported mode to RGB; transparency is composited onto white."""
    if im.mode in _HIGH_DEPTH_MODES:
        im = _to_8bit(im)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND)
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _mode_notes(im: Image.Image) -> list[str]:
    notes = []
    mode = im.mode
    if mode == "CMYK":
        notes.append(CMYK)
    if mode in _HIGH_DEPTH_MODES:
        notes.append(HIGH_BIT_DEPTH)
    if mode in ("P", "PA"):
        notes.append(PALETTE)
    if mode in ("1", "L", "LA", "La") or mode in _HIGH_DEPTH_MODES:
        notes.append(GRAYSCALE)
    if mode in _ALPHA_MODES or "transparency" in im.info:
        notes.append(ALPHA)
    return notes


def _decode(data: bytes, *, name: str, max_pixels: int) -> _Decoded:
    """Decode the first frame of an image completely and convert it to upright RGB."""
    try:
        im = Image.open(io.BytesIO(data), formats=_OPENERS)
    except Image.DecompressionBombError as exc:
        raise DecodeError(DECOMPRESSION_BOMB, str(exc)) from None
    except UnidentifiedImageError:
        pixels = _png_header_pixels(data)
        if pixels is not None and pixels > max_pixels:
            raise DecodeError(
                DECOMPRESSION_BOMB, f"header claims {pixels:,} pixels, limit {max_pixels:,}"
            ) from None
        if _looks_like_image(data):
            raise DecodeError(TRUNCATED, "the file ends inside the image header") from None
        raise DecodeError(NOT_IMAGE, "content is not a supported image format") from None
    except Exception as exc:
        reason = TRUNCATED if _is_truncation(exc) else UNDECODABLE
        raise DecodeError(reason, str(exc)) from None

    # Not closed explicitly: the source is an in-memory buffer, and closing would
    # invalidate the returned image when no conversion was needed.
    width, height = im.size
    # Checked from the header, before any pixel data is decompressed.
    if width * height > max_pixels:
        raise DecodeError(
            DECOMPRESSION_BOMB,
            f"{width}x{height} = {width * height:,} pixels, limit {max_pixels:,}",
        )
    notes: list[str] = []
    suffix = os.path.splitext(name)[1].lower()
    if im.format not in IMAGE_EXTENSIONS.get(suffix, (im.format,)):
        notes.append(WRONG_EXTENSION)
    if getattr(im, "n_frames", 1) > 1:
        notes.append(ANIMATED)
    try:
        im.load()  # the first frame; LOAD_TRUNCATED_IMAGES is never set
        notes.extend(_mode_notes(im))
        mode, fmt = im.mode, im.format or ""
        upright = im
        if _orientation(im) in range(2, 9):
            upright = ImageOps.exif_transpose(im)
            notes.append(EXIF_ROTATED)
        rgb = _to_rgb(upright)
    except Exception as exc:
        reason = TRUNCATED if _is_truncation(exc) else UNDECODABLE
        raise DecodeError(reason, str(exc) or type(exc).__name__) from None
    return _Decoded(rgb, rgb.width, rgb.height, mode, fmt, tuple(notes))


def decode_image(
    path: Path,
    size: int,
    *,
    method: str = RESIZE_METHOD,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Turn an image file into the pixels a model sees.

    The first frame is decoded, turned upright by its EXIF orientation, converted to
    RGB (16-bit samples scaled to 8 bits, palette/grayscale/CMYK converted,
    transparency composited onto a white background) and squashed to
    ``size x size`` without cropping.

    Args:
        path: The image file.
        size: Output height and width in pixels.
        method: A key of `RESIZE_METHODS`.
        max_pixels: Larger images (by their header) are refused, never decoded.

    Returns:
        A ``(size, size, 3)`` uint8 RGB array.

    Raises:
        DecodeError: With the reason code of `REASONS` that `scan` would give.
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize method {method!r}; choose from {sorted(RESIZE_METHODS)}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    try:
        decoded = _decode(_read_file(path), name=os.fspath(path), max_pixels=max_pixels)
    except DecodeError as exc:
        raise DecodeError(exc.reason, exc.detail, path) from None
    image = decoded.image
    if image.size != (size, size):
        image = image.resize((size, size), resample=RESIZE_METHODS[method], reducing_gap=None)
    return np.array(image, dtype=np.uint8)
