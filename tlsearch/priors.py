"""Priors from past studies: start a new search from strategies that did well before.

The idea behind Quick-Tune (Arango et al., ICLR 2024) and ZAP-HPO (Öztürk et al., ICML
2022), kept simple and local: the best trials of earlier studies on *other* datasets
are a better first guess than random samples, because what makes transfer work (how
deep to unfreeze, the learning rates, BatchNorm handling) carries across datasets more
than it differs. `--prior STUDY_DIR|FILE` reads each source's best complete trials
(baseline recipes left out: they are enqueued anyway), maps their parameters onto the
current space (a value outside it is clipped into a range or dropped for a choice; a
backbone the space lacks drops the prior, another size of it is the nearest one), and
enqueues them after the baselines as ordinary trials: sampled, pruned and seen by the
sampler like any other. A prior file (`tlsearch priors STUDY... --out FILE`) holds the
same records without the studies.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["PRIORS_PER_SOURCE", "Prior", "PriorError", "load_priors", "map_onto",
           "write_priors"]

#: Best trials taken from each source study.
PRIORS_PER_SOURCE = 3
_FORMAT = "tlsearch-priors/1"


class PriorError(ValueError):
    """A prior source cannot be read; the message is one line saying why."""


@dataclass(frozen=True)
class Prior:
    """One earlier trial: where it came from, how it scored there, its parameters."""

    source: str  # the study's name and data folder, for the report and the notice
    trial: int
    value: float
    params: dict[str, Any]  # Optuna parameters of its space (backbone as "name@size")


def _from_study(study_dir: Path, top: int) -> list[Prior]:
    from optuna.trial import TrialState

    from tlsearch.search import load_config, open_study

    try:
        config = load_config(study_dir)
        handle = open_study(config, create=False)
    except Exception as exc:  # a folder that is not a study: say which and why
        raise PriorError(f"--prior {study_dir}: not a readable study ({exc})") from None
    done = [t for t in handle.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and not t.user_attrs.get("baseline") and t.params]
    done.sort(key=lambda t: -t.value)
    source = f"{config.study} ({config.data_dir})"
    return [Prior(source, t.number, float(t.value), dict(t.params)) for t in done[:top]]


def _from_file(path: Path) -> list[Prior]:
    try:
        data = json.loads(path.read_text())
        if data.get("format") != _FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {_FORMAT!r}")
        return [Prior(str(p["source"]), int(p["trial"]), float(p["value"]), dict(p["params"]))
                for p in data["priors"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PriorError(f"--prior {path}: not a priors file ({exc})") from None


def load_priors(sources: Sequence[Path], top: int = PRIORS_PER_SOURCE) -> list[Prior]:
    """The best `top` trials of each study folder, and every record of each priors file."""
    priors: list[Prior] = []
    for source in sources:
        path = Path(source)
        if path.is_file():
            priors += _from_file(path)
        elif path.is_dir():
            priors += _from_study(path, top)
        else:
            raise PriorError(f"--prior {path}: no such study folder or priors file")
    return priors


def write_priors(priors: Sequence[Prior], path: Path) -> None:
    path.write_text(json.dumps({"format": _FORMAT, "priors": [asdict(p) for p in priors]},
                               indent=1))


def _fit(param: Any, value: Any) -> Any:
    """`value` inside `param` (a range clips and snaps to its step), or None."""
    from tlsearch.space import Choice, Fixed, Range

    if isinstance(param, Fixed):
        return None  # not searched here: the space's value stands
    if isinstance(param, Choice):
        return value if param.contains(value) else None
    if isinstance(param, Range) and isinstance(value, (int, float)):
        clipped = min(max(value, param.low), param.high)
        if param.step is not None:
            clipped = param.low + round((clipped - param.low) / param.step) * param.step
            clipped = min(clipped, param.high)
        return int(round(clipped)) if param.is_int else float(clipped)
    return None


def map_onto(space: Any, prior: Prior) -> dict[str, Any] | None:
    """Optuna params of `space` for the prior (for `study.enqueue_trial`), or None when
    its backbone is not in the space."""
    from tlsearch.space import SpaceError
    from tlsearch.space._model import _split_pair

    values: dict[str, Any] = {}
    backbone = prior.params.get("backbone")
    if backbone is not None:
        name, size = _split_pair(str(backbone))
        sizes = dict(space.backbones).get(name)
        if not sizes:
            return None
        nearest = min(sizes, key=lambda s: (abs(math.log(s / size)), s))
        values["backbone"] = f"{name}@{nearest}"
    for key, value in prior.params.items():
        if key in space.params:
            fitted = _fit(space.params[key], value)
            if fitted is not None:
                values[key] = fitted
    for _ in range(len(values) + 1):  # drop what this space makes inactive, then retry
        try:
            return space.trial_params(**values)
        except SpaceError as exc:
            if exc.key not in values or exc.key == "backbone":
                return None
            del values[exc.key]
    return None
