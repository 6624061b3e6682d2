"""A search space's parameters (`Fixed`, `Choice`, `Range`) and the `SearchSpace` that
samples `Strategy`s from them.

`SearchSpace.sample` is the only caller of `trial.suggest_*` in tlsearch; everything
downstream sees a plain `Strategy`. The backbone and its image size are one
categorical over ``"name@size"`` strings, and the fine-tuning parameters
(`CONDITIONAL_PARAMS`) are only sampled when the trial unfreezes something, so TPE
never models values that had no effect.
"""


from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import optuna

from tlsearch.strategy import (
    ALL_BLOCKS,
    AUGMENTATIONS,
    BN_MODES,
    HEAD_INITS,
    IMBALANCE_REMEDIES,
    OPTIMIZERS,
    SCHEDULES,
    Strategy,
)

#: Parameters sampled only when `unfreeze_blocks != 0` (`gradual` also needs > 1 block).
CONDITIONAL_PARAMS = ("gradual", "bn_mode", "backbone_lr_ratio", "finetune_epochs")

#: Smallest image size a space may ask for (the Keras applications refuse less).
MIN_IMAGE_SIZE = 32

def _spaces_dir() -> Path:
    """The bundled spaces: the checkout's top-level `search_spaces/`, which an installed
    wheel carries as the `tlsearch.search_spaces` package data."""
    package = Path(__file__).resolve().parent.parent  # tlsearch/
    checkout = package.parent / "search_spaces"
    return checkout if checkout.is_dir() else package / "search_spaces"


#: Where the bundled spaces live.
SPACES_DIR = _spaces_dir()

# Strategy requires backbone_lr > 0 even when nothing is unfrozen; the value is unused then.
_PLACEHOLDER_LR_RATIO = 0.1
_RANGE_KEYS = ("low", "high", "log", "step")
_META_KEYS = ("name", "description", "objective", "backbones")


class SpaceError(ValueError):
    """A search space, an override or a requested value is invalid (one line, names the key)."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Fixed:
    """A parameter that is set, not searched (it never appears in `trial.params`)."""

    value: Any

    def default(self) -> Any:
        return self.value

    def contains(self, value: Any) -> bool:
        return value == self.value

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> Any:
        return self.value

    def distribution(self) -> optuna.distributions.BaseDistribution | None:
        return None


@dataclass(frozen=True)
class Choice:
    """A categorical parameter; the first choice is the default for baselines."""

    choices: tuple[Any, ...]

    def default(self) -> Any:
        return self.choices[0]

    def contains(self, value: Any) -> bool:
        return value in self.choices

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> Any:
        return trial.suggest_categorical(name, self.choices)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.CategoricalDistribution(self.choices)


@dataclass(frozen=True)
class Range:
    """A numeric range, inclusive at both ends; int when `low` and `high` are ints."""

    low: int | float
    high: int | float
    log: bool = False
    step: int | float | None = None

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int)

    def default(self) -> int | float:
        """The (geometric, for log ranges) midpoint, snapped to the step grid."""
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        step = self.step if self.step is not None else (1 if self.is_int else None)
        if step is not None:
            mid = self.low + round((mid - self.low) / step) * step
        return int(mid) if self.is_int else float(mid)

    def contains(self, value: Any) -> bool:
        if not self.low <= value <= self.high:
            return False
        return self.step is None or _on_grid(value - self.low, self.step)

    def suggest(self, trial: optuna.trial.BaseTrial, name: str) -> int | float:
        if self.is_int:
            return trial.suggest_int(name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.is_int:
            return optuna.distributions.IntDistribution(
                self.low, self.high, log=self.log, step=self.step or 1
            )
        return optuna.distributions.FloatDistribution(
            self.low, self.high, log=self.log, step=self.step
        )


Param = Fixed | Choice | Range


@dataclass(frozen=True)
class _Domain:
    """What values one space parameter admits; `default=None` means the Strategy default."""

    kind: type  # bool, int, float or str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    strict_minimum: bool = False
    below: float | None = None  # exclusive upper bound
    default: Any = None

    def check(self, name: str, value: Any, path: str, *, allow_all: bool = True) -> Any:
        """Return `value` normalised to the domain's type, or raise naming `path`."""
        if self.kind is bool:
            if not isinstance(value, bool):
                _fail(path, f"must be true or false, got {value!r}")
            return value
        if self.kind is str:
            if value not in self.choices or not isinstance(value, str):
                hint = _did_you_mean(value, self.choices) if isinstance(value, str) else ""
                _fail(path, f"must be one of {', '.join(self.choices)}; got {value!r}{hint}")
            return value
        if name == "unfreeze_blocks" and value == "all":
            if not allow_all:
                _fail(path, "'all' cannot bound a range; list it as a choice instead")
            return ALL_BLOCKS
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                _fail(path, f"must be an integer, got {value!r}")
        else:
            if isinstance(value, str):
                # YAML 1.1 reads `1e-4` (no dot) as a string; accept what float() accepts.
                try:
                    value = float(value)
                except ValueError:
                    _fail(path, f"must be a number, got {value!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                _fail(path, f"must be a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value):
                _fail(path, f"must be finite, got {value!r}")
        if self.minimum is not None:
            if value < self.minimum or (self.strict_minimum and value == self.minimum):
                op = ">" if self.strict_minimum else ">="
                also = " or 'all'" if name == "unfreeze_blocks" else ""
                _fail(path, f"must be {op} {self.minimum}{also}, got {value!r}")
        if self.below is not None and value >= self.below:
            _fail(path, f"must be < {self.below}, got {value!r}")
        return value


# Canonical order: unfreeze_blocks first, because the conditional parameters depend on it.
_DOMAINS: Mapping[str, _Domain] = MappingProxyType(
    {
        "unfreeze_blocks": _Domain(int, minimum=0),
        "gradual": _Domain(bool),
        "bn_mode": _Domain(str, choices=BN_MODES),
        "backbone_lr_ratio": _Domain(float, minimum=0, strict_minimum=True, default=0.1),
        "finetune_epochs": _Domain(int, minimum=1, default=3),
        "head_lr": _Domain(float, minimum=0, strict_minimum=True),
        "head_epochs": _Domain(int, minimum=1),
        "augmentation": _Domain(str, choices=AUGMENTATIONS),
        "imbalance": _Domain(str, choices=IMBALANCE_REMEDIES),
        "head_dropout": _Domain(float, minimum=0, below=1),
        "head_hidden_units": _Domain(int, minimum=0),
        "head_l2": _Domain(float, minimum=0),
        "label_smoothing": _Domain(float, minimum=0, below=1),
        "batch_size": _Domain(int, minimum=1),
        "schedule": _Domain(str, choices=SCHEDULES),
        "optimizer": _Domain(str, choices=OPTIMIZERS),
        "weight_decay": _Domain(float, minimum=0),
        "warmup_epochs": _Domain(int, minimum=0),
        "early_stopping_patience": _Domain(int, minimum=0),
        "head_init": _Domain(str, choices=HEAD_INITS),
        "epoch_soup": _Domain(int, minimum=0),
    }
)
_STRATEGY_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Strategy)}
#: Keys added after studies were first written: left out of the fingerprint while fixed
#: at their default, so a study created before them still opens (and resumes).
_ADDED_LATER = ("epoch_soup",)


def _added_later_at_default(name: str, param: Any) -> bool:
    return (name in _ADDED_LATER and isinstance(param, Fixed)
            and param.value == _STRATEGY_DEFAULTS[name])


# What a trial that does not fine-tune records for the parameters it did not sample.
_INACTIVE = {"gradual": False, "bn_mode": "frozen", "finetune_epochs": 0}


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space; build it with `load_space` or `SearchSpace.from_dict`.

    `backbones` pairs each backbone name with its image sizes; `params` maps every
    space parameter (see `search_spaces/README.md`) to a `Fixed`, `Choice` or `Range`.
    """

    name: str
    backbones: tuple[tuple[str, tuple[int, ...]], ...]
    params: Mapping[str, Param]
    objective: str = "balanced_accuracy"
    description: str = ""
    source: str = field(default="<dict>", compare=False)

    def __post_init__(self) -> None:
        missing = [name for name in _DOMAINS if name not in self.params]
        unknown = [name for name in self.params if name not in _DOMAINS]
        if missing or unknown:
            raise SpaceError(f"params: missing {missing}, unknown {unknown}", key="params")
        if not self.backbones:
            raise SpaceError("backbones: the space has no backbones", key="backbones")
        # Canonical order (sampling depends on it) and read-only, so the space stays frozen.
        ordered = {name: self.params[name] for name in _DOMAINS}
        object.__setattr__(self, "params", MappingProxyType(ordered))

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    @classmethod
    def from_dict(
        cls,
        data: Any,
        *,
        known_backbones: Collection[str] | None = None,
        source: str = "<dict>",
    ) -> SearchSpace:
        """Validate parsed YAML (or `to_dict()` output) into a space.

        Args:
            data: A mapping as `yaml.safe_load` returns it.
            known_backbones: Registry names; when given, other backbone names are an error.
            source: Where the data came from; names the space when it has no `name`.
        """
        from tlsearch.space._load import _parse

        return _parse(data, known_backbones=known_backbones, default_name="custom", source=source)

    def sample(
        self, trial: optuna.trial.BaseTrial, *, weights: str = "imagenet", seed: int = 0
    ) -> Strategy:
        """Suggest one strategy from `trial`; its seed is `seed + trial.number`."""
        backbone, size = _split_pair(self._backbone_param().suggest(trial, "backbone"))
        values: dict[str, Any] = {}
        for name, param in self.params.items():
            if _is_active(name, values):
                values[name] = param.suggest(trial, name)
        return self._strategy(backbone, size, values, weights=weights, seed=seed + trial.number)

    def fixed_strategy(
        self, *, weights: str = "imagenet", seed: int = 0, **values: Any
    ) -> Strategy:
        """The strategy for given parameter values, each checked against this space.

        Keys are space parameters plus `backbone` (a name or ``"name@size"``) and
        `image_size`. Missing ones take the fixed value, the first choice, or the
        range's midpoint; fine-tuning parameters are not allowed when nothing unfreezes.
        """
        backbone, size, chosen, _ = self._resolve(values)
        return self._strategy(backbone, size, chosen, weights=weights, seed=seed)

    def trial_params(self, **values: Any) -> dict[str, Any]:
        """Params for `study.enqueue_trial`, so that trial samples `fixed_strategy(**values)`.

        Only searched, active parameters are included (Optuna rejects the others).
        """
        return self._resolve(values)[3]

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Every searched parameter's distribution (conditional ones included), by param name."""
        params: dict[str, Param] = {"backbone": self._backbone_param(), **self.params}
        dists = {name: param.distribution() for name, param in params.items()}
        return {name: dist for name, dist in dists.items() if dist is not None}

    def backbone_sizes(self) -> list[tuple[str, int]]:
        """Every (backbone, image size) pair in the space, in file order."""
        return [(name, size) for name, sizes in self.backbones for size in sizes]

    def restrict_backbones(self, names: Collection[str]) -> SearchSpace:
        """Keep only the given backbones (names, or ``"name@size"`` for a single size).

        Optuna refuses a categorical whose choices change within one study, so restrict
        before the study samples its first trial; the fingerprint changes accordingly.
        """
        names = [names] if isinstance(names, str) else list(names)
        pairs = set(self.backbone_sizes())
        keep: set[tuple[str, int]] = set()
        for item in names:
            if "@" in item:
                pair = _split_pair(item)
                if pair not in pairs:
                    _fail("backbones", f"{item!r} is not in space {self.name!r}")
                keep.add(pair)
            else:
                matched = {pair for pair in pairs if pair[0] == item}
                if not matched:
                    have = ", ".join(name for name, _ in self.backbones)
                    _fail("backbones", f"{item!r} is not in space {self.name!r} (has: {have})")
                keep |= matched
        if not keep:
            _fail("backbones", "restricting to no backbones would leave nothing to search")
        restricted = tuple(
            (name, tuple(s for s in sizes if (name, s) in keep))
            for name, sizes in self.backbones
            if any((name, s) in keep for s in sizes)
        )
        return dataclasses.replace(self, backbones=restricted)

    def to_dict(self) -> dict[str, Any]:
        """The normalised space as plain YAML/JSON data; `from_dict` reads it back."""
        data: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "objective": self.objective,
            "backbones": {name: list(sizes) for name, sizes in self.backbones},
        }
        for name, param in self.params.items():
            data[name] = _param_data(param, _encoder(name))
        return data

    def fingerprint(self) -> str:
        """A stable hash of what the space samples (name and description excluded)."""
        data = {k: v for k, v in self.to_dict().items() if k not in ("name", "description")
                and not _added_later_at_default(k, self.params.get(k))}
        # Order matters: Optuna refuses a categorical whose choices are reordered.
        data["backbones"] = [[name, list(sizes)] for name, sizes in self.backbones]
        blob = json.dumps({"format": 1, **data}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def _backbone_param(self) -> Param:
        pairs = tuple(f"{name}@{size}" for name, size in self.backbone_sizes())
        return Fixed(pairs[0]) if len(pairs) == 1 else Choice(pairs)

    def _resolve(self, values: Mapping[str, Any]) -> tuple[str, int, dict[str, Any], dict]:
        """Check requested values; return backbone, size, every active value, trial params."""
        values = dict(values)
        allowed = ("backbone", "image_size", *self.params)
        for key in values:
            if key not in allowed:
                _fail(key, f"unknown parameter{_did_you_mean(key, allowed)}")
        sizes_of = dict(self.backbones)
        backbone = values.pop("backbone", self.backbones[0][0])
        size = values.pop("image_size", None)
        if isinstance(backbone, str) and "@" in backbone:
            backbone, size = _split_pair(backbone)
        if backbone not in sizes_of:
            have = ", ".join(sizes_of)
            _fail("backbone", f"{backbone!r} is not in space {self.name!r} (has: {have})")
        size = sizes_of[backbone][0] if size is None else size
        if size not in sizes_of[backbone]:
            have = ", ".join(map(str, sizes_of[backbone]))
            _fail("image_size", f"{size!r} is not a size of {backbone} here (has: {have})")
        chosen: dict[str, Any] = {}
        trial_params: dict[str, Any] = {}
        backbone_param = self._backbone_param()
        if not isinstance(backbone_param, Fixed):
            trial_params["backbone"] = f"{backbone}@{size}"
        for name, param in self.params.items():
            active = _is_active(name, chosen)
            if name in values:
                value = _DOMAINS[name].check(name, values[name], name)
                if not active:
                    if name in _INACTIVE and value == _INACTIVE[name]:
                        continue  # restating the inactive value is harmless
                    _fail(name, f"not used when unfreeze_blocks is {chosen['unfreeze_blocks']}")
                if not param.contains(value):
                    _fail(name, f"{value!r} is outside the space ({_describe(param)})")
            elif not active:
                continue
            else:
                value = param.default()
            chosen[name] = value
            if not isinstance(param, Fixed):
                trial_params[name] = value
        return backbone, size, chosen, trial_params

    def _strategy(
        self, backbone: str, size: int, values: Mapping[str, Any], *, weights: str, seed: int
    ) -> Strategy:
        fields = {**_INACTIVE, **values}
        ratio = fields.pop("backbone_lr_ratio", _PLACEHOLDER_LR_RATIO)
        return Strategy(
            backbone=backbone,
            image_size=size,
            weights=weights,
            backbone_lr=fields["head_lr"] * ratio,
            seed=seed,
            **fields,
        )


def _is_active(name: str, chosen: Mapping[str, Any]) -> bool:
    """Whether `name` is sampled given the values chosen so far (unfreeze_blocks first)."""
    if name not in CONDITIONAL_PARAMS:
        return True
    unfreeze = chosen["unfreeze_blocks"]
    if name == "gradual":
        # Gradual unfreezing of a single block is the same as unfreezing it at once.
        return unfreeze not in (0, 1)
    return unfreeze != 0


def _param_data(param: Param, encode: Callable[[Any], Any]) -> Any:
    if isinstance(param, Fixed):
        return encode(param.value)
    if isinstance(param, Choice):
        return [encode(v) for v in param.choices]
    data: dict[str, Any] = {"low": param.low, "high": param.high, "log": param.log}
    if param.step is not None:
        data["step"] = param.step
    return data


def _encoder(name: str) -> Callable[[Any], Any]:
    if name == "unfreeze_blocks":
        return lambda v: "all" if v == ALL_BLOCKS else v
    return lambda v: v


def _describe(param: Param) -> str:
    if isinstance(param, Fixed):
        return f"fixed at {param.value!r}"
    if isinstance(param, Choice):
        return "choices: " + ", ".join(map(repr, param.choices))
    extra = ", log" if param.log else (f", step {param.step}" if param.step else "")
    return f"range {param.low}..{param.high}{extra}"


def _split_pair(value: str) -> tuple[str, int]:
    name, _, size = value.rpartition("@")
    if not name or not size.isdigit():
        _fail("backbone", f"expected 'name@size', got {value!r}")
    return name, int(size)


def _on_grid(offset: float, step: float) -> bool:
    ratio = offset / step
    return abs(ratio - round(ratio)) < 1e-8


def _did_you_mean(word: Any, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(key: str, problem: str) -> NoReturn:
    raise SpaceError(f"{_one_line(key)}: {_one_line(problem)}", key=key)


def _text(data: Mapping, key: str, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        _fail(key, f"must be a string, got {value!r}")
    return value


def _kind(value: Any) -> str:
    return {list: "a list", dict: "a mapping", type(None): "nothing"}.get(
        type(value), f"{type(value).__name__} {value!r}"
    )


def _top_key(key: str) -> str:
    return re.split(r"[.\[]", key, maxsplit=1)[0]
