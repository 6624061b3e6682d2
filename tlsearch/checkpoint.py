"""A trial's checkpoint: where it stands after its last completed epoch.

A checkpoint folder holds one `ckpt-<step>.npz` (the trial's changeable weights, both
optimizers' variables and its best epoch's weights, as `w<i>`, `ob<i>`, `oh<i>`, `b<i>`)
and `latest.json` (the rest, with the npz's SHA-256). Each is written to a temporary
name and renamed into place, the JSON last, so a reader finds the previous checkpoint
or the new one; a torn or edited npz fails its checksum and is never used.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlsearch.atomic import atomic_write, replacing

__all__ = ["CHECKPOINT_DIR_NAME", "Checkpoint", "load_checkpoint"]

#: A trial's checkpoint folder, inside the trial's own folder.
CHECKPOINT_DIR_NAME = "checkpoint"
_LATEST = "latest.json"


@dataclass(frozen=True)
class Checkpoint:
    """A trial after a completed epoch: where to continue, and the arrays to continue from."""

    strategy: dict[str, Any]  # as `Strategy.to_dict()`: only that strategy resumes from it
    global_step: int
    phase_index: int
    epoch_in_phase: int
    history: tuple[dict[str, Any], ...]
    #: The trial's changeable variables (the frozen prefix never changes), in order.
    weights: tuple[np.ndarray, ...]
    opt_backbone: tuple[np.ndarray, ...]
    opt_head: tuple[np.ndarray, ...]
    plateau_factor: float = 1.0
    best_value: float | None = None
    best_step: int | None = None
    best_weights: tuple[np.ndarray, ...] | None = None

    def save(self, directory: Path) -> None:
        """Write the checkpoint into `directory` atomically, replacing the one before."""
        arrays = {f"w{i}": v for i, v in enumerate(self.weights)}
        arrays.update({f"ob{i}": v for i, v in enumerate(self.opt_backbone)})
        arrays.update({f"oh{i}": v for i, v in enumerate(self.opt_head)})
        if self.best_weights is not None:
            arrays.update({f"b{i}": v for i, v in enumerate(self.best_weights)})
        state = {
            "strategy": self.strategy, "global_step": self.global_step,
            "phase_index": self.phase_index, "epoch_in_phase": self.epoch_in_phase,
            "history": list(self.history), "plateau_factor": self.plateau_factor,
            "best_value": self.best_value, "best_step": self.best_step,
            "n_weights": len(self.weights), "n_opt_b": len(self.opt_backbone),
            "n_opt_h": len(self.opt_head),
        }
        _write(Path(directory), arrays, state)

    def restore_optimizers(self, opt_backbone: Any, opt_head: Any) -> None:
        """Set each optimizer's variables to the checkpoint's, where their counts match
        (one whose variables differ from the checkpoint's keeps its own)."""
        for optimizer, values in ((opt_backbone, self.opt_backbone), (opt_head, self.opt_head)):
            if len(optimizer.variables) == len(values):
                for variable, value in zip(optimizer.variables, values, strict=True):
                    variable.assign(value)


def load_checkpoint(directory: Path) -> Checkpoint | None:
    """The last intact checkpoint in `directory`, or None (none there, torn or corrupt)."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / _LATEST).read_text())
        blob = (directory / meta["arrays"]).read_bytes()
    except (OSError, ValueError, KeyError):
        return None
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        return None
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}

    def series(prefix: str, n: int) -> tuple[np.ndarray, ...]:
        return tuple(arrays[f"{prefix}{i}"] for i in range(n))

    n_best = sum(1 for k in arrays if k.startswith("b"))
    try:
        return Checkpoint(
            strategy=meta["strategy"], global_step=meta["global_step"],
            phase_index=meta["phase_index"], epoch_in_phase=meta["epoch_in_phase"],
            history=tuple(meta["history"]), weights=series("w", meta["n_weights"]),
            opt_backbone=series("ob", meta["n_opt_b"]), opt_head=series("oh", meta["n_opt_h"]),
            plateau_factor=meta.get("plateau_factor", 1.0), best_value=meta.get("best_value"),
            best_step=meta.get("best_step"), best_weights=series("b", n_best) if n_best else None,
        )
    except KeyError:  # written by a tlsearch that did not record all of it
        return None


def _write(directory: Path, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
    """`ckpt-<step>.npz`, then `latest.json` naming it with its hash; older npz removed."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{state['global_step']:05d}.npz"
    with replacing(directory / name) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    # Named last: a kill before this line leaves the previous checkpoint in charge.
    atomic_write(directory / _LATEST, json.dumps(dict(state, arrays=name, sha256=digest),
                                                default=float))
    for old in directory.glob("ckpt-*.npz"):
        if old.name != name:
            old.unlink(missing_ok=True)
