"""Loading a search space: a bundled name or a YAML file (plus `--set` overrides)
parsed and validated into a `SearchSpace`; every problem is a one-line `SpaceError`
naming the key."""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tlsearch.options import OBJECTIVES
from tlsearch.space._model import (
    _DOMAINS,
    _META_KEYS,
    _RANGE_KEYS,
    _STRATEGY_DEFAULTS,
    MIN_IMAGE_SIZE,
    SPACES_DIR,
    Choice,
    Fixed,
    Param,
    Range,
    SearchSpace,
    SpaceError,
    _did_you_mean,
    _Domain,
    _fail,
    _kind,
    _on_grid,
    _one_line,
    _text,
    _top_key,
)


def bundled_spaces() -> list[str]:
    """Names of the spaces shipped in `search_spaces/`, sorted."""
    return sorted(path.stem for path in SPACES_DIR.glob("*.yaml"))


def load_space(
    name_or_path: str | Path,
    *,
    overrides: Sequence[str] = (),
    known_backbones: Collection[str] | None = None,
) -> SearchSpace:
    """Load, override and validate a search space.

    Args:
        name_or_path: A bundled name (see `bundled_spaces`) or a path to a YAML file
            (anything with a `.yaml`/`.yml` suffix or a path separator).
        overrides: ``KEY=VALUE`` strings; VALUE is YAML, KEY may be dotted
            (``backbones.mobilenet_v2=[96]``, ``head_lr.high=1.0e-3``); ``KEY=null``
            removes the key so its default applies.
        known_backbones: The backbone registry's names; None skips that check.

    Returns:
        The validated space.

    Raises:
        SpaceError: one line naming the file or override and the key.
    """
    path, source = _locate(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpaceError(f"{source}: cannot read the file ({_one_line(str(err))})") from None
    data = _load_yaml(text, source)
    if overrides and data is None:
        data = {}
    applied: list[tuple[str, str]] = []
    for override in overrides:
        key = _apply_override(data, override)
        applied.append((key, override))
    try:
        space = _parse(data, known_backbones=known_backbones, default_name=path.stem, source=source)
    except SpaceError as err:
        # Blame the last override that touched the failing key, else the file.
        blamed = source
        for key, override in applied:
            if err.key is not None and _top_key(key) == _top_key(err.key):
                blamed = f"--set {_one_line(override)}"
        raise SpaceError(f"{blamed}: {err}", key=err.key) from None
    return space


def _locate(name_or_path: str | Path) -> tuple[Path, str]:
    text = str(name_or_path)
    path = Path(text)
    looks_like_path = (
        isinstance(name_or_path, Path)
        or path.suffix in (".yaml", ".yml")
        or "/" in text
        or "\\" in text
    )
    if looks_like_path:
        if not path.is_file():
            raise SpaceError(f"{text}: no such search-space file")
        return path, text
    bundled = bundled_spaces()
    if text not in bundled:
        raise SpaceError(
            f"unknown search space {text!r}{_did_you_mean(text, bundled)}; bundled spaces: "
            f"{', '.join(bundled) or 'none'} (or give a path to a .yaml file)"
        )
    return SPACES_DIR / f"{text}.yaml", f"search_spaces/{text}.yaml"


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = _one_line(err.problem or err.context or "syntax error")
        if err.problem and err.context and err.context_mark and err.context_mark != mark:
            # The cause is often earlier than where the parser noticed (an unclosed bracket).
            problem += f" ({_one_line(err.context)} from line {err.context_mark.line + 1})"
        raise SpaceError(f"{source}: {where}invalid YAML: {problem}") from None
    except yaml.YAMLError as err:
        raise SpaceError(f"{source}: invalid YAML: {_one_line(str(err))}") from None


def _apply_override(data: Any, override: str) -> str:
    """Apply one ``KEY=VALUE`` override to `data` in place; return the key."""
    shown = f"--set {_one_line(override)}"
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpaceError(f"{shown}: expected KEY=VALUE, e.g. head_epochs=5")
    parts = key.split(".")
    if not all(parts):
        raise SpaceError(f"{shown}: {key!r} is not a valid key", key=key)
    if not raw.strip():
        raise SpaceError(f"{shown}: no value after '=' (use null to remove {key!r})", key=key)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err)
        raise SpaceError(f"{shown}: invalid YAML value ({_one_line(problem)})", key=key) from None
    if not isinstance(data, dict):
        raise SpaceError(f"{shown}: the space file is not a mapping", key=key)
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            parent = ".".join(parts[: depth + 1])
            raise SpaceError(
                f"{shown}: {parent!r} is not a mapping, so {key!r} cannot be set", key=key
            )
        node = child
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = copy.deepcopy(value)
    return key


def _parse(
    data: Any, *, known_backbones: Collection[str] | None, default_name: str, source: str
) -> SearchSpace:
    if data is None:
        raise SpaceError("the space is empty; it needs at least 'backbones'")
    if not isinstance(data, Mapping):
        raise SpaceError(f"the space must be a mapping of keys to values, got {_kind(data)}")
    allowed = (*_META_KEYS, *_DOMAINS)
    for key in data:
        if key not in allowed:
            hint = _did_you_mean(key, allowed) if isinstance(key, str) else ""
            raise SpaceError(f"unknown key {key!r}{hint}", key=str(key))
    if "backbones" not in data:
        _fail("backbones", "missing; map each backbone to its image size(s)")
    name = _text(data, "name", default_name)
    if not name:
        _fail("name", "must not be empty")
    objective = _text(data, "objective", OBJECTIVES[0])
    if objective not in OBJECTIVES:
        hint = _did_you_mean(objective, OBJECTIVES)
        _fail("objective", f"must be one of {', '.join(OBJECTIVES)}; got {objective!r}{hint}")
    params: dict[str, Param] = {}
    for key, domain in _DOMAINS.items():
        if key in data:
            params[key] = _parse_param(key, data[key], domain)
        else:
            default = domain.default if domain.default is not None else _STRATEGY_DEFAULTS[key]
            params[key] = Fixed(domain.check(key, default, key))
    return SearchSpace(
        name=name,
        backbones=_parse_backbones(data["backbones"], known_backbones),
        params=params,
        objective=objective,
        description=_text(data, "description", "").strip(),
        source=source,
    )


def _parse_backbones(
    raw: Any, known: Collection[str] | None
) -> tuple[tuple[str, tuple[int, ...]], ...]:
    if not isinstance(raw, Mapping) or not raw:
        _fail(
            "backbones",
            f"must map backbone names to image size(s), e.g. "
            f"{{mobilenet_v2: [224]}}; got {_kind(raw)}",
        )
    parsed = []
    for name, sizes in raw.items():
        path = f"backbones.{name}"
        if not isinstance(name, str) or not name or "@" in name:
            _fail(path, "a backbone name must be a non-empty string without '@'")
        if known is not None and name not in known:
            hint = _did_you_mean(name, known) or f"; known: {', '.join(sorted(known))}"
            _fail(path, f"unknown backbone{hint}")
        if sizes is None:
            _fail(path, "no image size; give one or a list, e.g. [224]")
        items = sizes if isinstance(sizes, list) else [sizes]
        if not items:
            _fail(path, "empty list; give at least one image size")
        for i, size in enumerate(items):
            where = f"{path}[{i}]" if isinstance(sizes, list) else path
            if isinstance(size, bool) or not isinstance(size, int):
                _fail(where, f"an image size must be an integer, got {size!r}")
            if size < MIN_IMAGE_SIZE:
                _fail(where, f"image size must be >= {MIN_IMAGE_SIZE}, got {size}")
        if len(set(items)) != len(items):
            _fail(path, f"duplicate image sizes in {items}")
        parsed.append((name, tuple(items)))
    return tuple(parsed)


def _parse_param(name: str, raw: Any, domain: _Domain) -> Param:
    if raw is None:
        _fail(name, "no value; give a value, a list of choices or a {low, high} range")
    if isinstance(raw, Mapping):
        return _parse_range(name, raw, domain)
    if isinstance(raw, list):
        if not raw:
            _fail(name, "empty list; give at least one choice")
        values = tuple(domain.check(name, v, f"{name}[{i}]") for i, v in enumerate(raw))
        if len(set(values)) != len(values):
            _fail(name, f"duplicate choices in {list(raw)}")
        # A single choice is not a search; keep it out of trial.params.
        return Fixed(values[0]) if len(values) == 1 else Choice(values)
    return Fixed(domain.check(name, raw, name))


def _parse_range(name: str, raw: Mapping, domain: _Domain) -> Param:
    if domain.kind not in (int, float):
        _fail(name, "a {low, high} range needs a numeric parameter; give a value or a list")
    for key in raw:
        if key not in _RANGE_KEYS:
            hint = _did_you_mean(key, _RANGE_KEYS) if isinstance(key, str) else ""
            _fail(name, f"unknown key {key!r}{hint}")
    for key in ("low", "high"):
        if key not in raw:
            _fail(name, f"a range needs both 'low' and 'high' (missing {key!r})")
    low = domain.check(name, raw["low"], f"{name}.low", allow_all=False)
    high = domain.check(name, raw["high"], f"{name}.high", allow_all=False)
    log = raw.get("log", False)
    if not isinstance(log, bool):
        _fail(f"{name}.log", f"must be true or false, got {log!r}")
    step = raw.get("step")
    if step is not None:
        step = _Domain(domain.kind, minimum=0, strict_minimum=True).check(
            "step", step, f"{name}.step"
        )
    if low > high:
        _fail(name, f"low ({low}) must be <= high ({high})")
    if log and low <= 0:
        _fail(f"{name}.low", f"must be > 0 for a log range, got {low}")
    if domain.kind is int and step == 1:
        step = None  # Optuna's default; normalised so equal spaces fingerprint equally
    if log and step is not None:
        _fail(name, "step cannot be combined with log: true")
    if step is not None and not _on_grid(high - low, step):
        _fail(name, f"high - low ({high - low}) must be a multiple of step ({step})")
    if low == high:
        return Fixed(low)
    return Range(low, high, log=log, step=step)
























