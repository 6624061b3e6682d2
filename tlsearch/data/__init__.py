"""The dataset: scanning and validating image files, the split, and the decode cache.

A data folder is either ``DATA_DIR/<class>/<image>`` (layout ``"flat"``) or
``DATA_DIR/{train,val[,test]}/<class>/<image>`` (layout ``"presplit"``; ``validation``
is accepted for ``val``). Class folders are walked recursively, as Keras does;
linked folders are followed, except one that leads back to a folder already walked.

`scan` opens every candidate file once, decodes it completely with Pillow and
either accepts it (`ImageRecord`, possibly with notes) or skips it with a reason
code (`SkippedFile`); a bad file never stops a scan. `decode_image` is the one way
a file becomes pixels, for training, validation and single-image prediction
alike, and `scan` runs the same code (minus the resize), so every accepted file
decodes later. Paths are stored as ``str`` relative to the root, ``/``-separated;
names that are not valid UTF-8 survive as surrogate escapes (`os.fsdecode`).

One concept per module: `_images` (reason codes, notes, `decode_image`), `_scan`
(walking and validating a folder), `_split` (the split) and `_cache` (the decode cache).
"""

from tlsearch.data._cache import (
    decode_cached,
)
from tlsearch.data._images import (
    ACCEPTED_FORMATS,
    ALPHA,
    ANIMATED,
    BROKEN_SYMLINK,
    CMYK,
    DECOMPRESSION_BOMB,
    DEFAULT_MAX_PIXELS,
    EXIF_ROTATED,
    GRAYSCALE,
    HIGH_BIT_DEPTH,
    HUGE_HEADER,
    IMAGE_EXTENSIONS,
    NOT_IMAGE,
    NOTES,
    PALETTE,
    REASONS,
    RESIZE_METHOD,
    RESIZE_METHODS,
    SYMLINK_LOOP,
    TRUNCATED,
    UNDECODABLE,
    UNREADABLE,
    WRONG_EXTENSION,
    ZERO_BYTES,
    DecodeError,
    decode_image,
)
from tlsearch.data._scan import (
    PARTS,
    DatasetError,
    ImageIndex,
    ImageRecord,
    SkippedFile,
    scan,
)
from tlsearch.data._split import (
    Split,
    make_split,
)

__all__ = [
    "ACCEPTED_FORMATS",
    "ALPHA",
    "ANIMATED",
    "BROKEN_SYMLINK",
    "CMYK",
    "DECOMPRESSION_BOMB",
    "DEFAULT_MAX_PIXELS",
    "DatasetError",
    "DecodeError",
    "EXIF_ROTATED",
    "GRAYSCALE",
    "HIGH_BIT_DEPTH",
    "HUGE_HEADER",
    "IMAGE_EXTENSIONS",
    "ImageIndex",
    "ImageRecord",
    "NOTES",
    "NOT_IMAGE",
    "PALETTE",
    "PARTS",
    "REASONS",
    "RESIZE_METHOD",
    "RESIZE_METHODS",
    "SYMLINK_LOOP",
    "SkippedFile",
    "Split",
    "TRUNCATED",
    "UNDECODABLE",
    "UNREADABLE",
    "WRONG_EXTENSION",
    "ZERO_BYTES",
    "decode_cached",
    "decode_image",
    "make_split",
    "scan",
]
