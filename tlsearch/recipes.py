"""The recipes table: each augmentation level, preprocessing family, optimizer, loss and
learning-rate schedule, defined once as data.

An entry is a one-line description and the Keras constructor calls it stands for
(class and arguments). The engine builds its layers, optimizers and losses from these
calls (`build`), the report words them (`description`), and the standalone script
renders the very same calls as source (`source`), so the script cannot drift from what
the engine trains. The schedule is a plain function: the engine calls it and the
script carries its source (`schedule_source`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AUGMENTATIONS",
    "BATCHNORM",
    "IMBALANCE",
    "LOSSES",
    "OPTIMIZERS",
    "PREPROCESSING",
    "SCHEDULES",
    "Arg",
    "Call",
    "Recipe",
    "loss_recipe",
    "lr_factor",
    "make_loss",
    "make_optimizer",
    "schedule_source",
]

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class Arg:
    """A value the caller supplies: a strategy field or `seed`/`lr` (`Arg("seed", 2)` is
    the seed plus 2). The script writes it as a name where it has one, else its value."""

    name: str
    offset: int = 0

    def value(self, values: Mapping[str, Any]) -> Any:
        return values[self.name] + self.offset if self.offset else values[self.name]


@dataclass(frozen=True)
class Call:
    """One Keras constructor call, `keras.<target>(*args, **kwargs)`.

    `weights` (for a fixed layer) are set after building it for an RGB input: the
    caffe family's channel swap and mean are a Dense layer's exact 0/1 kernel and bias.
    """

    target: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    weights: tuple[tuple, ...] | None = None

    def build(self, values: Mapping[str, Any]) -> Any:
        import keras
        import numpy as np

        fn: Any = keras
        for part in self.target.split("."):
            fn = getattr(fn, part)
        made = fn(*(_resolve(a, values) for a in self.args),
                  **{k: _resolve(v, values) for k, v in self.kwargs})
        if self.weights is not None:
            made.build((None, None, None, 3))
            made.set_weights([np.asarray(w, dtype="float32") for w in self.weights])
        return made

    def source(self, values: Mapping[str, Any], names: Mapping[str, str]) -> str:
        """The call as Python source, `layers.RandomFlip("horizontal", seed=SEED)`."""
        parts = [_literal(a, values, names) for a in self.args]
        parts += [f"{k}={_literal(v, values, names)}" for k, v in self.kwargs]
        return f"{self.target}({', '.join(parts)})"


@dataclass(frozen=True)
class Recipe:
    """What one option of the search space is: a description and its Keras calls."""

    description: str
    calls: tuple[Call, ...] = ()

    def build(self, values: Mapping[str, Any]) -> list[Any]:
        return [call.build(values) for call in self.calls]

    def source(self, variable: str, values: Mapping[str, Any], names: Mapping[str, str]) -> str:
        """`variable = [call, ...]` as Python source, fixed weights set after it."""
        if not self.calls:
            return f"{variable} = []"
        pad = " " * (len(variable) + 4)
        items = f",\n{pad}".join(call.source(values, names) for call in self.calls)
        lines = [f"{variable} = [{items}]"]
        for i, call in enumerate(self.calls):
            if call.weights is not None:
                arrays = ",\n".join(f"    np.array({_lists(w)!r}, dtype=\"float32\")"
                                     for w in call.weights)
                lines += [f"{variable}[{i}].build((None, None, None, 3))",
                          f"{variable}[{i}].set_weights([\n{arrays}])"]
        return "\n".join(lines)


def _lists(value: Any) -> Any:
    return [_lists(v) for v in value] if isinstance(value, tuple) else value


def _resolve(value: Any, values: Mapping[str, Any]) -> Any:
    return value.value(values) if isinstance(value, Arg) else value


def _literal(value: Any, values: Mapping[str, Any], names: Mapping[str, str]) -> str:
    if not isinstance(value, Arg):
        return repr(value)
    if value.name in names:
        return names[value.name] + (f" + {value.offset}" if value.offset else "")
    return repr(value.value(values))


def _seeded(target: str, *args: Any, offset: int, name: str, **kwargs: Any) -> Call:
    """A random layer seeded from the strategy's seed (`offset` apart per layer)."""
    return Call(target, args, (*kwargs.items(), ("seed", Arg("seed", offset)), ("name", name)))


_FLIP = _seeded("layers.RandomFlip", "horizontal", offset=0, name="aug_flip")

#: Augmentation levels: Keras random-preprocessing layers, active only in training.
AUGMENTATIONS = {
    "none": Recipe("no augmentation"),
    "light": Recipe("horizontal flip, rotation ±5%, zoom ±10%, translation ±5%", (
        _FLIP,
        _seeded("layers.RandomRotation", 0.05, offset=1, name="aug_rotate"),
        _seeded("layers.RandomZoom", 0.1, offset=2, name="aug_zoom"),
        _seeded("layers.RandomTranslation", 0.05, 0.05, offset=3, name="aug_translate"),
    )),
    "medium": Recipe("horizontal flip, rotation ±10%, zoom ±15%, translation ±10%, "
                     "contrast ±20%, brightness ±20%", (
        _FLIP,
        _seeded("layers.RandomRotation", 0.1, offset=1, name="aug_rotate"),
        _seeded("layers.RandomZoom", 0.15, offset=2, name="aug_zoom"),
        _seeded("layers.RandomTranslation", 0.1, 0.1, offset=3, name="aug_translate"),
        _seeded("layers.RandomContrast", 0.2, value_range=(0, 255), offset=4,
                name="aug_contrast"),
        _seeded("layers.RandomBrightness", 0.2, value_range=(0, 255), offset=5,
                name="aug_brightness"),
    )),
    "strong": Recipe("horizontal flip, zoom ±20%, translation ±10%, then RandAugment "
                     "(2 random ops, magnitude 0.5)", (
        _FLIP,
        _seeded("layers.RandomZoom", 0.2, offset=2, name="aug_zoom"),
        _seeded("layers.RandomTranslation", 0.1, 0.1, offset=3, name="aug_translate"),
        _seeded("layers.RandAugment", value_range=(0, 255), num_ops=2, factor=0.5, offset=6,
                name="aug_randaugment"),
    )),
}

#: Preprocessing families: the backbone's `preprocess_input` as built-in Keras layers
#: over raw RGB 0-255, so exported models load in plain Keras with nothing registered.
PREPROCESSING = {
    "none": Recipe("none: the backbone preprocesses raw 0-255 input itself"),
    "tf": Recipe("0-255 scaled to [-1, 1]", (
        Call("layers.Rescaling", (1.0 / 127.5,), (("offset", -1.0), ("name", "preprocess_tf"))),
    )),
    "torch": Recipe("0-255 scaled to [0, 1], then ImageNet mean and standard deviation", (
        Call("layers.Rescaling", (1.0 / 255.0,), (("name", "preprocess_torch_scale"),)),
        Call("layers.Normalization", (), (
            ("mean", list(IMAGENET_MEAN_RGB)),
            ("variance", [s * s for s in IMAGENET_STD_RGB]),
            ("name", "preprocess_torch_normalize"))),
    )),
    # RGB->BGR and mean subtraction as one fixed affine map over channels (a channel swap
    # as the kernel, minus the mean as the bias); products with exact 0/1 weights keep it
    # bit-identical to `preprocess_input`.
    "caffe": Recipe("RGB to BGR, minus the ImageNet mean (caffe)", (
        Call("layers.Dense", (3,), (("trainable", False), ("name", "preprocess_caffe_bgr_mean")),
             weights=(((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)),
                      tuple(-m for m in CAFFE_MEAN_BGR))),
    )),
}

#: Optimizers, one per learning rate (`lr`): the head's and the backbone's.
OPTIMIZERS = {
    "adam": Recipe("Adam", (Call("optimizers.Adam", (Arg("lr"),)),)),
    "adamw": Recipe("AdamW (decoupled weight decay)", (
        Call("optimizers.AdamW", (Arg("lr"),), (("weight_decay", Arg("weight_decay")),)),)),
    "sgd": Recipe("SGD with momentum 0.9", (
        Call("optimizers.SGD", (Arg("lr"),), (("momentum", 0.9),)),)),
}

#: Losses, per image (`reduction=None`): the trainer takes their weighted mean, the
#: weights being the imbalance remedy's.
LOSSES = {
    "crossentropy": Recipe("categorical cross-entropy", (
        Call("losses.CategoricalCrossentropy", (), (
            ("label_smoothing", Arg("label_smoothing")), ("reduction", None))),)),
    "focal": Recipe("categorical focal cross-entropy (gamma 2)", (
        Call("losses.CategoricalFocalCrossentropy", (), (
            ("gamma", 2.0), ("label_smoothing", Arg("label_smoothing")),
            ("reduction", None))),)),
}

#: BatchNorm modes while fine-tuning (`tlsearch.model` sets them per layer).
BATCHNORM = {
    "frozen": "BatchNorm stays in inference mode and nothing in it updates (the safe default "
              "for small datasets).",
    "affine": "BatchNorm scale/shift (gamma, beta) of the unfrozen blocks learn; the moving "
              "statistics stay as pretrained.",
    "adapt": "BatchNorm layers use batch statistics while training and update their moving "
             "statistics to the new data.",
}

#: Class-imbalance remedies: the loss's class weights, the epoch's sampling, the loss.
IMBALANCE = {
    "none": "no remedy: every image counts once",
    "class_weight": "loss weighted per class, inversely to its frequency (sklearn 'balanced')",
    "oversample": "each epoch draws classes uniformly (minority images repeat)",
    "focal": "alpha-balanced focal loss (gamma 2, balanced class weights)",
}

#: Learning-rate schedules within a phase (`lr_factor`).
SCHEDULES = {
    "constant": "constant learning rates",
    "cosine": "cosine decay to a tenth of each base learning rate",
    "plateau": "halved after every epoch without improvement",
}


def loss_recipe(imbalance: str) -> Recipe:
    """The loss an imbalance remedy trains with."""
    return LOSSES["focal" if imbalance == "focal" else "crossentropy"]


def make_optimizer(strategy: Any, lr: float) -> Any:
    """The strategy's optimizer for one learning rate (the head's or the backbone's)."""
    (optimizer,) = OPTIMIZERS[strategy.optimizer].build(
        {"lr": lr, "weight_decay": strategy.weight_decay})
    return optimizer


def make_loss(strategy: Any) -> Any:
    """The strategy's per-image loss."""
    (loss,) = loss_recipe(strategy.imbalance).build(
        {"label_smoothing": strategy.label_smoothing})
    return loss


def lr_factor(schedule: str, epoch: int, epochs: int, warmup: int, plateau: float) -> float:
    """Multiplier of a phase's base learning rates at `epoch` (0-based within the phase):
    a linear warm-up over `warmup` epochs, then the schedule."""
    if warmup and epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    if schedule == "cosine":
        t = (epoch - warmup) / max(1, epochs - warmup)
        return 0.5 * (1 + math.cos(math.pi * t)) * 0.9 + 0.1
    if schedule == "plateau":
        return plateau
    return 1.0


# Read once, at import: the file on disk may be a newer version by the time a report
# is written.
_SCHEDULE_SOURCE = inspect.getsource(lr_factor)


def schedule_source() -> str:
    """`lr_factor`'s source, for the standalone script (which imports math)."""
    return _SCHEDULE_SOURCE
