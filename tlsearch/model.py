"""Strategy + backbone spec -> Keras models that share one set of weights.

The deployable graph is `input -> augmentation -> preprocessing -> backbone -> head`,
every piece a built-in Keras layer (no Lambda, no custom objects), so a saved model
loads with plain Keras and `safe_mode=True`. For training on cached activations the
backbone is split at a block boundary into a frozen prefix and a trainable suffix.

BatchNorm modes (the seeds' hardest lesson, made explicit):
  * `frozen`: BN runs in inference mode and nothing in it updates;
  * `affine`: gamma/beta of the unfrozen blocks learn, moving statistics stay;
  * `adapt`: every BN layer of the backbone uses batch statistics while training
    (moving statistics update), so the prefix is no longer a fixed function and
    cannot be cached. After every epoch the moving statistics are re-estimated on the
    clean training images (`reestimate_batchnorm`), so the statistics a model is
    evaluated and exported with describe its current weights, not an average over
    the weights of the last hundred steps (Keras's momentum 0.99).
The backbone is always called with an explicit `training=`: False in the deployable
model, and `bn_mode == "adapt"` in the training graphs.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlsearch.backbones import (
    OUTPUT_CUT,
    BackboneSpec,
    Blocks,
    build_backbone,
    find_blocks,
    get_spec,
)
from tlsearch.recipes import AUGMENTATIONS, PREPROCESSING
from tlsearch.strategy import ALL_BLOCKS, Strategy

# Keras 3 warns on every call of a nested functional model (our head) that the input
# "structure" differs (a list of one tensor vs one tensor); the call is correct.
warnings.filterwarnings("ignore", message=r"The structure of `inputs` doesn't match",
                        category=UserWarning)

__all__ = [
    "TransferModel",
    "augmentation_layers",
    "build_transfer_model",
    "preprocessing_layers",
]

def preprocessing_layers(family: str) -> list[Any]:
    """The backbone family's `preprocess_input`, as built-in Keras layers
    (`tlsearch.recipes.PREPROCESSING`); input is raw RGB in 0-255."""
    if family not in PREPROCESSING:
        raise ValueError(f"unknown preprocessing family {family!r}")
    return PREPROCESSING[family].build({})


def augmentation_layers(level: str, *, seed: int = 0) -> list[Any]:
    """Keras random-preprocessing layers for a strength level (active only in training),
    from `tlsearch.recipes.AUGMENTATIONS`."""
    if level not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation level {level!r}")
    return AUGMENTATIONS[level].build({"seed": seed})


def reestimate_statistics(bns: list[Any], forward: Any, images: np.ndarray, *,
                          batch_size: int = 64) -> None:
    """Set the moving mean and variance of BatchNorm layers `bns` to their size-weighted
    average over `images` under the current weights (as
    `torch.optim.swa_utils.update_bn`).

    `forward(batch)` runs the network in training mode; each BN momentum is set per
    batch to seen / (seen + batch), which makes the moving statistics the average of the
    batch statistics. Momentum and trainability are restored afterwards.
    """
    if not bns or not len(images):
        return
    saved = [(bn.momentum, bn.trainable) for bn in bns]
    for bn in bns:
        bn.trainable = True  # a non-trainable Keras BN ignores training=True
        bn.moving_mean.assign(np.zeros(bn.moving_mean.shape, dtype="float32"))
        bn.moving_variance.assign(np.ones(bn.moving_variance.shape, dtype="float32"))
    seen = 0
    try:
        for start in range(0, len(images), batch_size):
            batch = np.asarray(images[start:start + batch_size], dtype=np.float32)
            for bn in bns:
                bn.momentum = seen / (seen + len(batch))
            forward(batch)
            seen += len(batch)
    finally:
        for bn, (momentum, trainable) in zip(bns, saved, strict=True):
            bn.momentum, bn.trainable = momentum, trainable


def _is_bn(layer: Any) -> bool:
    from keras import layers

    return isinstance(layer, layers.BatchNormalization)


@dataclass
class TransferModel:
    """The Keras pieces of one strategy; every model here shares the same layers.

    Attributes:
        backbone: the full backbone (functional, no top).
        head: feature map -> class probabilities.
        prefix / suffix: the backbone split at the cut of `strategy.unfreeze_blocks`.
            `prefix` is None when the whole backbone trains; `suffix` is None when
            nothing of it does.
        cacheable: whether the prefix is a fixed function of the image, so its
            activations can be computed once and reused.
        extractors: frozen-part extractor models with their traced forward passes;
            shared with the backbone pool, so a search traces each one once.
    """

    strategy: Strategy
    spec: BackboneSpec
    num_classes: int
    blocks: Blocks
    backbone: Any
    head: Any
    preprocess: list[Any]
    augment: list[Any]
    prefix: Any
    suffix: Any
    cut: str | None
    extractors: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    #: sha256 of the backbone's weights as built (`tlsearch.kept.weights_digest`), for a
    #: pooled backbone; a trial that left it so keeps only its head.
    pristine_digest: str | None = None

    @property
    def depth(self) -> int:
        """Blocks unfrozen at the deepest point of training (`ALL_BLOCKS` stays -1)."""
        if not self.strategy.fine_tunes:
            return 0
        k = self.strategy.unfreeze_blocks
        return ALL_BLOCKS if k == ALL_BLOCKS else min(k, len(self.blocks))

    @property
    def cacheable(self) -> bool:
        return self.prefix is not None and self.strategy.bn_mode != "adapt"

    @property
    def _train_flag(self) -> bool:
        return self.strategy.bn_mode == "adapt"

    # -- trainability ------------------------------------------------------------------

    def set_unfrozen(self, blocks: int) -> None:
        """Make the top `blocks` backbone blocks trainable (BN per the strategy's mode).

        `ALL_BLOCKS` makes the stem trainable too. Everything else in the backbone
        is frozen, except BatchNorm layers under `adapt`, which train everywhere.
        Callers must rebuild their optimizer (or recompile) afterwards: the set of
        trainable variables has changed.
        """
        ops = list(self.backbone.operations)
        cut = self.blocks.cut_for(blocks)
        if cut is None:
            start = 0
        elif cut == OUTPUT_CUT:
            start = len(ops)
        else:
            start = next(i for i, op in enumerate(ops) if op.name == cut) + 1
        mode = self.strategy.bn_mode
        for i, op in enumerate(ops):
            if not hasattr(op, "trainable"):
                continue
            in_suffix = i >= start
            if _is_bn(op):
                op.trainable = mode == "adapt" or (in_suffix and mode == "affine")
            else:
                op.trainable = in_suffix

    def reestimate_batchnorm(self, images: np.ndarray, batch_size: int = 64) -> None:
        """Replace every backbone BN layer's moving statistics by their average over
        `images` under the current weights (`reestimate_statistics`)."""

        def forward(batch: np.ndarray) -> None:
            x = batch
            for layer in self.preprocess:
                x = layer(x)
            self.backbone(x, training=True)

        reestimate_statistics([op for op in self.backbone.operations if _is_bn(op)], forward,
                              images, batch_size=batch_size)

    # -- graphs ----------------------------------------------------------------------

    def deployable(self, name: str = "tlsearch_model") -> Any:
        """Raw RGB 0-255 -> probabilities; BN always in inference mode."""
        import keras

        size = self.strategy.image_size
        inputs = keras.Input((size, size, 3), name="image_rgb_0_255")
        x = inputs
        for layer in self.augment:
            x = layer(x)
        for layer in self.preprocess:
            x = layer(x)
        x = self.backbone(x, training=False)
        outputs = self.head(x)
        return keras.Model(inputs, outputs, name=name)

    def train_forward(self, images: Any, dropout: Any = None) -> Any:
        """Training-mode forward pass on raw RGB images (the uncached path).

        Keras 3 functional models pass the *outer* `training` value down to every
        layer, overriding a `training=False` recorded when the graph was built, so
        training calls each piece directly with its own explicit flag.
        """
        x = images
        for layer in self.augment:
            x = layer(x, training=True)
        for layer in self.preprocess:
            x = layer(x)
        x = self.backbone(x, training=self._train_flag)
        return self.head_forward(x, dropout)

    def head_forward(self, x: Any, dropout: Any = None) -> Any:
        """The head in training mode. `dropout` (a scalar tensor, such as a variable)
        replaces the rate of its Dropout layers, with the same seeds: one traced step
        then serves every rate a search samples (`tlsearch.steps`)."""
        if dropout is None:
            return self.head(x, training=True)
        import keras
        import tensorflow as tf

        for layer in self.head.layers[1:]:  # a chain after its input
            if isinstance(layer, keras.layers.Dropout):
                seed = tf.cast(tf.math.floormod(layer.seed_generator.next(),
                                                tf.int32.max - 1), tf.int32)
                x = tf.nn.experimental.stateless_dropout(x, rate=dropout, seed=seed)
            else:
                x = layer(x, training=True)
        return x

    def feature_extractor(self) -> Any:
        """Raw RGB (already augmented, if at all) -> prefix activations, inference mode."""
        if self.prefix is None:
            raise ValueError("this strategy trains the whole backbone: there is no prefix")
        return self._frozen_extractor(self.prefix, "prefix_extractor")

    def output_extractor(self) -> Any:
        """Raw RGB -> the whole backbone's output in inference mode (frozen features)."""
        return self._frozen_extractor(self.backbone, "output_extractor")

    def _frozen_extractor(self, part: Any, name: str) -> Any:
        import keras
        import tensorflow as tf

        # By what it computes: a head-only strategy's prefix is the whole backbone.
        key = OUTPUT_CUT if part is self.backbone else str(self.cut)
        if key not in self.extractors:
            size = self.strategy.image_size
            inputs = keras.Input((size, size, 3), name="image_rgb_0_255")
            x = inputs
            for layer in self.preprocess:
                x = layer(x)
            model = keras.Model(inputs, part(x, training=False), name=name)
            # Traced once for any batch size: tracing a backbone costs about a second,
            # as much as a pass over a small dataset.
            forward = tf.function(lambda batch: model(batch, training=False),
                                  input_signature=[tf.TensorSpec((None, size, size, 3))])
            self.extractors[key] = (model, forward)
        return self.extractors[key][0]

    def traced(self, extractor: Any) -> Any:
        """The traced inference forward pass of an extractor made by this model."""
        return next(forward for model, forward in self.extractors.values()
                    if model is extractor)

    def features_model(self) -> Any:
        """Cached prefix activations -> probabilities, for inference-mode evaluation."""
        import keras

        if self.prefix is None:
            raise ValueError("this strategy trains the whole backbone: there is no prefix")
        shape = tuple(self.prefix.output.shape[1:])
        inputs = keras.Input(shape, name="prefix_activations")
        x = inputs if self.suffix is None else self.suffix(inputs, training=False)
        return keras.Model(inputs, self.head(x), name="features_model")

    def features_forward(self, features: Any, dropout: Any = None) -> Any:
        """Training-mode forward pass from cached prefix activations."""
        x = features if self.suffix is None else self.suffix(features, training=self._train_flag)
        return self.head_forward(x, dropout)

    @property
    def trainable_variables(self) -> tuple[list[Any], list[Any]]:
        """(backbone variables, head variables) that currently train: the two LR groups."""
        return list(self.backbone.trainable_variables), list(self.head.trainable_variables)

    def augment_images(self, images: Any) -> Any:
        """Apply the strategy's augmentation in training mode (identity for `none`)."""
        x = images
        for layer in self.augment:
            x = layer(x, training=True)
        return x


#: The head's standardization adds this to each variance (see `tlsearch.head`).
HEAD_NORM_EPSILON = 1e-37

def _build_head(feature_shape: tuple[int, ...], num_classes: int, strategy: Strategy) -> Any:
    import keras
    from keras import layers, regularizers

    reg = regularizers.L2(strategy.head_l2) if strategy.head_l2 > 0 else None
    inputs = keras.Input(feature_shape, name="features")
    x = layers.GlobalAveragePooling2D(name="head_pool")(inputs)
    # Fixed standardization, identity until the engine sets it from the training
    # features (tlsearch.head); saved with the model, so exports standardize exactly as
    # training did. A non-trainable BatchNormalization is Keras's fixed per-feature
    # affine map whose epsilon can be ~0: features of a random-init backbone can be 1e-12
    # in size, far below `Normalization`'s 1e-7 floor on the standard deviation.
    x = layers.BatchNormalization(epsilon=HEAD_NORM_EPSILON, center=False, scale=False,
                                  trainable=False, name="head_norm")(x)
    if strategy.head_dropout > 0:
        x = layers.Dropout(strategy.head_dropout, seed=strategy.seed, name="head_dropout")(x)
    if strategy.head_hidden_units:
        x = layers.Dense(strategy.head_hidden_units, activation="relu", kernel_regularizer=reg,
                         name="head_hidden")(x)
        if strategy.head_dropout > 0:
            x = layers.Dropout(strategy.head_dropout, seed=strategy.seed + 1,
                               name="head_hidden_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg,
                           dtype="float32", name="head_logits")(x)
    return keras.Model(inputs, outputs, name="head")


@dataclass
class _Pooled:
    backbone: Any
    blocks: Blocks
    pristine: list[np.ndarray]
    splits: dict[str | None, tuple[Any, Any]]
    extractors: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    dirty: bool = False  # handed to a trial that may change its weights or statistics
    digest: str = ""  # of `pristine`


#: Backbones built in this process, most recently used last. A search builds the same
#: few backbones over and over; building one (graph + weights file) costs seconds, more
#: than a head-only trial on cached activations.
_POOL: OrderedDict[tuple, _Pooled] = OrderedDict()
POOL_SIZE = 3


def _pool_key(spec: BackboneSpec, size: int, weights: str, seed: int) -> tuple:
    if weights == "none":
        return (spec.name, size, weights, seed)  # random init differs per seed
    if weights == "imagenet":
        return (spec.name, size, weights)
    st = Path(weights).stat()  # a file replaced on disk is a new entry
    return (spec.name, size, str(Path(weights).resolve()), st.st_size, st.st_mtime_ns)


def _pooled_backbone(spec: BackboneSpec, size: int, weights: str, seed: int,
                     *, will_change: bool) -> _Pooled:
    """A built backbone with its original weights restored, from the pool or new.

    `will_change`: the caller may train the backbone or update its BN statistics, so
    the next caller must restore the original weights first.
    """
    key = _pool_key(spec, size, weights, seed)
    entry = _POOL.get(key)
    if entry is None:
        from tlsearch.kept import weights_digest

        backbone = build_backbone(spec, size, weights, seed=seed)
        pristine = [np.array(w) for w in backbone.get_weights()]
        entry = _Pooled(backbone=backbone, blocks=find_blocks(backbone, spec.block_regex),
                        pristine=pristine, splits={}, digest=weights_digest(pristine))
        _POOL[key] = entry
        while len(_POOL) > POOL_SIZE:
            _POOL.popitem(last=False)
    else:
        if entry.dirty:  # the previous trial fine-tuned it (weights, BN statistics)
            entry.backbone.set_weights(entry.pristine)
        _POOL.move_to_end(key)
    entry.dirty = will_change
    return entry


def clear_backbone_pool() -> None:
    """Forget the pooled backbones, heads and the steps traced on them."""
    from tlsearch.steps import clear_step_pool

    _POOL.clear()
    _HEADS.clear()
    clear_step_pool()


#: Heads built in this process, by shape: the traced train steps of `tlsearch.steps`
#: close over a head's variables, so a later trial with the same head shape takes the
#: same head object, its values replaced by its own freshly initialised ones.
_HEADS: OrderedDict[tuple, Any] = OrderedDict()


def _pooled_head(fresh: Any, strategy: Strategy) -> Any:
    """The pooled head of `fresh`'s shape holding `fresh`'s initial values (weights,
    standardization and dropout seeds), or `fresh` itself, pooled."""
    key = (tuple(fresh.input.shape[1:]), int(fresh.output.shape[-1]),
           strategy.head_hidden_units, strategy.head_dropout > 0, strategy.head_l2)
    pooled = _HEADS.get(key)
    if pooled is None:
        _HEADS[key] = fresh
        while len(_HEADS) > 2 * POOL_SIZE:
            _HEADS.popitem(last=False)
        return fresh
    for variable, value in zip(pooled.variables, fresh.variables, strict=True):
        variable.assign(value)
    for mine, theirs in zip(pooled.layers, fresh.layers, strict=True):
        if hasattr(theirs, "rate"):  # what its config says and eager calls use
            mine.rate, mine.seed = theirs.rate, theirs.seed
    _HEADS.move_to_end(key)
    return pooled


def _split(backbone: Any, cut: str | None) -> tuple[Any, Any]:
    import keras

    if cut is None:
        return None, backbone
    if cut == OUTPUT_CUT:
        return backbone, None
    tensor = next(op for op in backbone.operations if op.name == cut).output
    prefix = keras.Model(backbone.inputs, tensor, name="prefix")
    suffix = keras.Model(tensor, backbone.outputs, name="suffix")
    return prefix, suffix


def build_transfer_model(strategy: Strategy, num_classes: int, *,
                         spec: BackboneSpec | None = None,
                         reuse_backbone: bool = False) -> TransferModel:
    """Build every graph a strategy needs, with trainability set for its full depth.

    Args:
        reuse_backbone: take the backbone (and its prefix/suffix split) from this
            process's pool, original weights restored, instead of building it. Only for
            callers that hold one transfer model at a time, as a search worker does:
            two live models would share, and re-freeze, the same layers.

    Raises:
        WeightsUnavailableError / WeightsError: as `build_backbone`.
    """
    import keras

    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    spec = spec or get_spec(strategy.backbone)
    keras.utils.set_random_seed(strategy.seed)
    depth = strategy.unfreeze_blocks if strategy.fine_tunes else 0
    if reuse_backbone:
        entry = _pooled_backbone(spec, strategy.image_size, strategy.weights, strategy.seed,
                                 will_change=depth != 0 or strategy.bn_mode == "adapt")
        backbone, blocks = entry.backbone, entry.blocks
        cut = blocks.cut_for(depth)
        if cut not in entry.splits:
            entry.splits[cut] = _split(backbone, cut)
        prefix, suffix = entry.splits[cut]
        extractors, digest = entry.extractors, entry.digest
    else:
        backbone = build_backbone(spec, strategy.image_size, strategy.weights,
                                  seed=strategy.seed)
        blocks = find_blocks(backbone, spec.block_regex)
        cut = blocks.cut_for(depth)
        prefix, suffix = _split(backbone, cut)
        extractors, digest = {}, None
    keras.utils.set_random_seed(strategy.seed)  # the head's init must not depend on the pool
    head = _build_head(tuple(backbone.output.shape[1:]), num_classes, strategy)
    if reuse_backbone:
        head = _pooled_head(head, strategy)
    model = TransferModel(
        strategy=strategy, spec=spec, num_classes=num_classes, blocks=blocks,
        backbone=backbone, head=head, preprocess=preprocessing_layers(spec.family),
        augment=augmentation_layers(strategy.augmentation, seed=strategy.seed),
        prefix=prefix, suffix=suffix, cut=cut, extractors=extractors, pristine_digest=digest,
    )
    model.set_unfrozen(model.depth)
    return model
