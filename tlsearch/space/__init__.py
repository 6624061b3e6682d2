"""Search spaces: a YAML file becomes a validated `SearchSpace` that samples `Strategy`s.

Every parameter of a space is a `Fixed` value, a `Choice` (categorical) or a `Range`
(int or float, optionally log or stepped): `_model` defines them and the space that
samples them; `_load` reads a bundled name or a YAML file, with `--set` overrides, into
one. Every problem in a space or an override is a one-line `SpaceError` naming the key.
"""

from tlsearch.options import OBJECTIVES
from tlsearch.space._load import bundled_spaces, load_space
from tlsearch.space._model import (
    CONDITIONAL_PARAMS,
    MIN_IMAGE_SIZE,
    SPACES_DIR,
    Choice,
    Fixed,
    Param,
    Range,
    SearchSpace,
    SpaceError,
)

__all__ = [
    "CONDITIONAL_PARAMS",
    "MIN_IMAGE_SIZE",
    "OBJECTIVES",
    "SPACES_DIR",
    "Choice",
    "Fixed",
    "Param",
    "Range",
    "SearchSpace",
    "SpaceError",
    "bundled_spaces",
    "load_space",
]
