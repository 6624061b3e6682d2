"""Traced train steps and validation passes, kept across the trials of a process.

Tracing a train step costs 0.1 s for a head alone and 0.5-1.3 s once backbone blocks
and their optimizer are in it (EfficientNet-Lite0, 2 cores): 15-21% of a pruned trial's
wall time in `benchmarks/RESULTS.md`'s profile, more than its validation passes. A
search runs the same few graphs over and over: the same pooled backbone split at the
same cut (`tlsearch.model`'s pool), the same pooled head shape, the same loss and
optimizer. So a step is traced once per such key and reused: the learning rates are
optimizer variables (set every epoch), the dropout rate is a variable the step reads
(`TransferModel.head_forward`), class weights come in as sample weights, and each reuse
zeroes the optimizers' state, as a new optimizer would start. The graph closes over
the objects it was traced on; a step is reused only while they are the same objects.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["POOL_SIZE", "Step", "clear_step_pool", "pooled"]

#: Steps and validation passes kept per process, most recently used last.
POOL_SIZE = 16


@dataclass
class Step:
    """A traced train step with what it updates."""

    fn: Any  # (x, y_onehot, sample_weight) -> (mean loss, correct count)
    opt_backbone: Any
    opt_head: Any
    backbone_vars: list[Any]
    head_vars: list[Any]
    dropout: Any  # the scalar variable the step reads as its dropout rate

    def reset(self, dropout: float) -> None:
        """Start as a freshly made step would: optimizer state zeroed (moments,
        iteration count; the learning rate is set before every epoch)."""
        for opt in (self.opt_backbone, self.opt_head):
            for variable in opt.variables:
                variable.assign(variable * 0)
        self.dropout.assign(dropout)


_POOL: OrderedDict[tuple, tuple[tuple[Any, ...], Any]] = OrderedDict()


def pooled(key: tuple | None, owners: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """What `build()` makes for `key`, reused while it closes over the same `owners`
    (checked by identity: a collected object's id can come back); `key` None: not
    pooled."""
    if key is None:
        return build()
    found = _POOL.get(key)
    if found is not None and len(found[0]) == len(owners) and all(
            a is b for a, b in zip(found[0], owners, strict=True)):
        _POOL.move_to_end(key)
        return found[1]
    made = build()
    _POOL[key] = (owners, made)
    while len(_POOL) > POOL_SIZE:
        _POOL.popitem(last=False)
    return made


def clear_step_pool() -> None:
    _POOL.clear()
