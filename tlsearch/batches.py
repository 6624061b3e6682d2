"""Inference over an array in fixed-size batches, gathered into one array.

The prefix pass, the validation pass and the final predictions all run a model this
way: slices of the (possibly memory-mapped) input as float32, the outputs written
into one array allocated on the first batch instead of concatenated at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["EVAL_BATCH", "map_batches"]

#: Batch size of every inference pass (the prefix and validation passes, predictions).
EVAL_BATCH = 128


def map_batches(fn: Callable[[np.ndarray], Any], inputs: Any, *, batch: int = EVAL_BATCH,
                first: Callable[[np.ndarray], Any] | None = None) -> np.ndarray:
    """`fn` on each float32 batch of `inputs`, its outputs stacked along the first axis.

    Args:
        fn: maps a batch to an array-like (a NumPy array or a tensor) of one row each.
        first: called instead of `fn` on the first batch (to time a trace, say).

    Returns:
        The outputs as one array, float32 unless `fn` returns float64.
    """
    if not len(inputs):
        raise ValueError("no inputs to run in batches")
    out = None
    for start in range(0, len(inputs), batch):
        x = np.asarray(inputs[start:start + batch], dtype=np.float32)
        call = first if start == 0 and first is not None else fn
        result = np.asarray(call(x))
        if out is None:
            out = np.empty((len(inputs), *result.shape[1:]),
                           dtype=np.result_type(result.dtype, np.float32))
        out[start:start + len(result)] = result
    return out
