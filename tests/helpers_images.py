"""Builders for image folders used by the tests: plain functions, no fixtures.

`malformed_corpus` writes one file of every kind `tlsearch.data` must handle and
returns what `scan` should say about each, so any test can reuse it.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: The `max_pixels` to scan `malformed_corpus` with: small enough for a cheap bomb.
CORPUS_MAX_PIXELS = 100 * 100

#: A file name that is not valid UTF-8, as Python sees it (surrogate escape).
NON_UTF8_NAME = os.fsdecode(b"bad\xff.png")
EMOJI_NAME = "\U0001f431 cat.png"


@dataclass(frozen=True)
class Expected:
    """What `scan` should report for one corpus file."""

    reason: str | None = None  # skip reason code; None when accepted
    notes: tuple[str, ...] = ()


def noise(width: int, height: int, seed: int) -> Image.Image:
    """A random RGB image: distinct content, hashes and perceptual hashes per seed."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def blocks(seed: int, size: int = 32) -> Image.Image:
    """A smooth random image (upsampled 4x4 blocks): survives brightening for phash."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    return small.resize((size, size), Image.Resampling.BICUBIC)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def png_header(width: int, height: int, *, idat: bool = False) -> bytes:
    """A PNG that claims `width` x `height` but carries no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    data = b"\x89PNG\r\n\x1a\n" + chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    )
    if idat:
        data += chunk(b"IDAT", b"") + chunk(b"IEND", b"")
    return data


def make_dataset(
    root: Path,
    counts: dict[str, int],
    *,
    size: int = 24,
    seed: int = 0,
    fmt: str = "PNG",
) -> Path:
    """Write ``root/<class>/<i>.png`` noise images; a class key may contain ``/``."""
    n = 0
    for label, count in counts.items():
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            ext = ".png" if fmt == "PNG" else ".bmp"
            (folder / f"{i:03d}{ext}").write_bytes(
                encode(noise(size, size, seed * 100_003 + n), fmt)
            )
            n += 1
    return root


def malformed_corpus(root: Path) -> dict[str, Expected]:
    """Write every kind of good and bad file under ``root`` (flat layout).

    Class ``mixed`` holds the corpus, class ``plain`` three ordinary images. The file
    ``mixed/locked.png`` is made mode 000; root can still read it, so tests running
    as root must simulate the permission error themselves. Scan with
    ``max_pixels=CORPUS_MAX_PIXELS``.

    Returns:
        Expected outcome per relative path (only candidate images).
    """
    mixed = root / "mixed"
    plain = root / "plain"
    mixed.mkdir(parents=True)
    plain.mkdir()
    expected: dict[str, Expected] = {}

    def put(name: str, data: bytes, outcome: Expected, folder: Path = mixed) -> Path:
        path = folder / name
        path.write_bytes(data)
        expected[f"{folder.name}/{name}"] = outcome
        return path

    for i in range(3):
        put(f"p{i}.png", encode(noise(20, 20, 900 + i), "PNG"), Expected(), plain)

    jpeg = encode(noise(64, 48, 1), "JPEG", quality=90)
    png = encode(noise(64, 48, 2), "PNG")
    put("zero.png", b"", Expected("zero_bytes"))
    put("text.png", b"this is not an image\n", Expected("not_image"))
    put("truncated.jpg", jpeg[: len(jpeg) // 2], Expected("truncated"))
    put("truncated.png", png[: len(png) // 2], Expected("truncated"))
    corrupt = bytearray(png)
    at = corrupt.find(b"IDAT") + 20
    corrupt[at : at + 10] = bytes(b ^ 0xFF for b in corrupt[at : at + 10])
    put("corrupt.png", bytes(corrupt), Expected("undecodable"))
    put("png_named.jpg", encode(noise(30, 20, 3), "PNG"), Expected(notes=("wrong_extension",)))
    put(
        "bomb.png",
        encode(Image.new("RGB", (200, 200), (9, 9, 9)), "PNG"),
        Expected("decompression_bomb"),
    )
    put("huge_header.png", png_header(100_000, 100_000), Expected("decompression_bomb"))
    put(
        "huge_header_idat.png",
        png_header(100_000, 100_000, idat=True),
        Expected("decompression_bomb"),
    )
    put("header_only.png", png_header(50, 50, idat=True), Expected("truncated"))
    locked = put("locked.png", encode(noise(16, 16, 4), "PNG"), Expected("unreadable"))
    locked.chmod(0)
    os.symlink("does-not-exist.png", mixed / "broken.png")
    expected["mixed/broken.png"] = Expected("broken_symlink")
    os.symlink("loop.png", mixed / "loop.png")
    expected["mixed/loop.png"] = Expected("symlink_loop")

    frames = [Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))]
    put(
        "animated.gif",
        encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        Expected(notes=("animated", "palette")),
    )
    put("exif.jpg", exif_rotated_jpeg(), Expected(notes=("exif_rotated",)))
    put(
        "cmyk.jpg",
        encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95),
        Expected(notes=("cmyk",)),
    )
    deep = np.tile(np.array([0, 32896, 65535], dtype=np.uint16), (8, 1))
    put("deep.png", encode(Image.fromarray(deep), "PNG"), Expected(notes=("16bit", "grayscale")))
    put("palette.png", encode(noise(16, 16, 5).convert("P"), "PNG"), Expected(notes=("palette",)))
    put("gray.png", encode(noise(16, 16, 6).convert("L"), "PNG"), Expected(notes=("grayscale",)))
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    rgba.paste((10, 20, 30, 255), (0, 0, 8, 16))
    put("rgba.png", encode(rgba, "PNG"), Expected(notes=("alpha",)))
    put(NON_UTF8_NAME, encode(noise(16, 16, 7), "PNG"), Expected())
    put(EMOJI_NAME, encode(noise(16, 16, 8), "PNG"), Expected())

    (mixed / "notes.txt").write_text("not a candidate\n")
    (mixed / ".DS_Store").write_bytes(b"\x00\x01")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes(b"")
    return expected


def exif_rotated_jpeg() -> bytes:
    """40x20 JPEG, left half red, right half blue, EXIF orientation 6 (rotate 90 CW).

    Displayed upright it is 20x40 with red on top and blue at the bottom.
    """
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = image.getexif()
    exif[0x0112] = 6
    return encode(image, "JPEG", quality=95, exif=exif)
