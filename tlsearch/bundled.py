"""Backbone weights that ship inside the package, for offline use (``--weights auto``).

They are pretrained by `tlsearch.pretrain` on sample photos bundled with scikit-image
and scikit-learn; each weights file has a provenance JSON next to it (command, source
photos, seed, versions, source-task accuracy, linear-probe scores, SHA-256).
Importing this module never imports TensorFlow.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["ASSETS", "BUNDLED", "bundled_weights_path", "provenance", "provenance_path"]

#: The package's asset folder.
ASSETS = Path(__file__).resolve().parent / "assets"

#: Backbone name -> weights file name in `ASSETS`.
BUNDLED: dict[str, str] = {"mobilenet_v3_small": "mobilenet_v3_small.tlsearch.weights.h5"}


def bundled_weights_path(backbone: str) -> Path | None:
    """The bundled weights file of a backbone, or None if it has none (or it is missing)."""
    name = BUNDLED.get(backbone)
    if name is None:
        return None
    path = ASSETS / name
    return path if path.is_file() else None


def provenance_path(backbone: str) -> Path | None:
    """Where the provenance JSON of a backbone's bundled weights lives (None if no entry)."""
    name = BUNDLED.get(backbone)
    if name is None:
        return None
    stem = name.removesuffix(".weights.h5").removesuffix(".h5")
    return ASSETS / f"{stem}.json"


def provenance(backbone: str) -> dict | None:
    """The provenance record of a backbone's bundled weights, or None if there is none."""
    path = provenance_path(backbone)
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
