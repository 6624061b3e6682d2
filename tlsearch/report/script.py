"""The standalone Keras script of a recipe: plain `keras.applications` code that trains
the recommended strategy the way the trial engine does, shown in the report."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from tlsearch.head import C_GRID as HEAD_C_GRID
from tlsearch.head import DEFAULT_C as HEAD_DEFAULT_C
from tlsearch.head import MAX_ITER as HEAD_MAX_ITER
from tlsearch.head import TOL as HEAD_TOL

__all__ = ["keras_snippet"]

_TEMPLATES = Path(__file__).parent / "templates"


def _phase_plan(s: dict[str, Any], n_blocks: int) -> list[tuple[int, int]]:
    """(unfrozen blocks, epochs) per phase, exactly as the trial engine plans them."""
    from tlsearch.plan import plan_phases  # the engine's own plan, so the two never drift
    from tlsearch.strategy import Strategy

    return [(p.blocks, p.epochs) for p in plan_phases(Strategy.from_dict(s), n_blocks)]


def keras_snippet(s: dict[str, Any], spec: Any, *, data_dir: str, val_fraction: float,
                  trial: int | None = None, study: str = "") -> str:
    """A standalone Keras script that trains the strategy's recipe.

    Plain `keras.applications` code with the strategy's values: preprocessing and
    augmentation as layers, an explicit `training=` on the backbone, two learning rates
    (head and backbone), the same phases (head warm-up, then unfreezing from the top),
    BatchNorm handled per mode, the imbalance remedy and the best-epoch weights kept.
    Rendered from `templates/recipe.py.j2`; what varies by recipe comes from
    `tlsearch.recipes`, the table the engine builds from.
    """
    from tlsearch.recipes import (
        AUGMENTATIONS,
        OPTIMIZERS,
        PREPROCESSING,
        SCHEDULES,
        loss_recipe,
        schedule_source,
    )

    family = spec.family if spec else "tf"
    values = {"seed": s["seed"], "weight_decay": s.get("weight_decay"),
              "label_smoothing": s["label_smoothing"]}
    names = {"seed": "SEED", "lr": "lr"}
    weighted = s["imbalance"] in ("class_weight", "focal")
    optimizer, loss = OPTIMIZERS[s["optimizer"]], loss_recipe(s["imbalance"])
    context = {
        "s": s, "header": (f"# Reproduces tlsearch trial #{trial} of study {study!r}:"
                           if trial is not None else "# The recommended tlsearch recipe:"),
        "data_dir": repr(data_dir), "val_fraction": repr(val_fraction),
        "bn_mode": repr(s["bn_mode"]), "schedule": repr(s["schedule"]),
        "schedule_text": SCHEDULES[s["schedule"]],
        "plan": repr(_phase_plan(s, spec.n_blocks if spec else 1)),
        **_backbone_code(s, spec),
        "preprocess": PREPROCESSING[family].source("preprocess", values, names),
        "preprocess_text": PREPROCESSING[family].description,
        "augment": AUGMENTATIONS[s["augmentation"]].source("augment", values, names),
        "augment_text": AUGMENTATIONS[s["augmentation"]].description,
        "head": _head_code(s),
        "lr_factor": schedule_source(),
        "optimizer": "keras." + optimizer.calls[0].source(values, names),
        "optimizer_text": optimizer.description,
        "loss": "keras." + loss.calls[0].source(values, names), "loss_text": loss.description,
        "weighted": weighted, "oversample": s["imbalance"] == "oversample",
        "sample_weight": ("tf.gather(class_weights, tf.argmax(y, 1))" if weighted
                          else "tf.ones(tf.shape(y)[:1])"),
        "adapt": s["bn_mode"] == "adapt", "soup": int(s.get("epoch_soup") or 0),
        "head_init": s.get("head_init", "solve"), "hidden": bool(s.get("head_hidden_units")),
        "start_from_solve": (s.get("head_init", "solve") != "random"
                             and not s.get("head_hidden_units")),
        "balanced": s["imbalance"] != "none", "max_iter": HEAD_MAX_ITER, "tol": HEAD_TOL,
        "default_c": HEAD_DEFAULT_C,
        "c_grid": repr(tuple(sorted(HEAD_C_GRID)) if s.get("head_init", "solve") == "solve"
                       else (HEAD_DEFAULT_C,)),
    }
    return _template().render(**context)


@functools.cache
def _template() -> Any:
    """The script's template, parsed once per process (a report renders one per trial)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    # Escaping by the template's kind, as Jinja recommends: HTML/XML would be escaped;
    # this one is Python source (values written with repr()), which the report's own
    # autoescaped template escapes where it shows it.
    env = Environment(loader=FileSystemLoader(str(_TEMPLATES)),
                      autoescape=select_autoescape(("html", "htm", "xml")),
                      keep_trailing_newline=True, undefined=StrictUndefined)
    return env.get_template("recipe.py.j2")


def _backbone_code(s: dict[str, Any], spec: Any) -> dict[str, str]:
    """The import and constructor of the backbone, with the study's weights."""
    ctor = spec.constructor if spec else f"keras.applications.{s['backbone']}"
    module, _, attr = ctor.rpartition(".")
    if module == "keras.applications":
        imports, call = "", f"keras.applications.{attr}"
    else:
        imports, call = f"from {module} import {attr}\n", attr
    kwargs = "".join(f", {k}={v!r}" for k, v in (spec.constructor_kwargs if spec else ()))
    make = (f"base = {call}(include_top=False, weights={{}},\n"
            f"    input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3){kwargs})")
    weights = s["weights"]
    if weights == "imagenet":
        base = ("# Pretrained weights: ImageNet, through Keras's own download and cache.\n"
                + make.format('"imagenet"'))
    elif weights == "none":
        base = "# Weights: none (random initialisation), as in the study.\n" + make.format("None")
    else:
        base = ("# Weights: the file the study used.\n" + make.format("None")
                + f"\nbase.load_weights({weights!r})")
    if spec is not None and spec.block_regex is None:
        starts = ("# Blocks: the 'mixedN' modules; block k starts after module k-1 ends.\n"
                  "STARTS = [i + 1 for i, layer in enumerate(base.layers)\n"
                  "          if re.fullmatch(r\"mixed\\d+\", layer.name)][:-1]")
    else:
        regex = spec.block_regex if spec else r"^(block\d+)_"
        starts = (f"BLOCK_REGEX = {regex!r}  # first group names a layer's block\n"
                  "STARTS, _seen = [], set()  # index of each block's first layer\n"
                  "for i, layer in enumerate(base.layers):\n"
                  "    m = re.search(BLOCK_REGEX, layer.name)\n"
                  "    if m and m.group(1) not in _seen:\n"
                  "        _seen.add(m.group(1))\n"
                  "        STARTS.append(i)")
    return {"imports": imports, "base": base, "starts": starts}


def _head_code(s: dict[str, Any]) -> str:
    """The head as the engine builds it: pooling, a fixed standardization, dropout, an
    optional hidden layer, the softmax classifier."""
    reg = f"keras.regularizers.L2({s['head_l2']!r})" if s.get("head_l2") else "None"
    head = ["head = keras.Sequential([\n    layers.GlobalAveragePooling2D()",
            "layers.BatchNormalization(epsilon=1e-37, center=False, scale=False,\n"
            "                              trainable=False)"]
    if s.get("head_dropout"):
        head.append(f"layers.Dropout({s['head_dropout']!r}, seed=SEED)")
    if s.get("head_hidden_units"):
        head.append(f"layers.Dense({s['head_hidden_units']}, activation=\"relu\", "
                    f"kernel_regularizer={reg})")
        if s.get("head_dropout"):
            head.append(f"layers.Dropout({s['head_dropout']!r}, seed=SEED + 1)")
    head.append(f"layers.Dense(num_classes, activation=\"softmax\",\n"
                f"                 kernel_regularizer={reg})")
    return ",\n    ".join(head) + ",\n])"
