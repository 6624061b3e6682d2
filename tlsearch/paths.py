"""Where tlsearch keeps what it can recompute: one cache folder (decoded images, frozen
prefix activations, converted weights), `$TLSEARCH_CACHE` or the XDG cache."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    base = os.environ.get("TLSEARCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tlsearch")
    return Path(base)
