"""The transfer-model builder: preprocessing, BN modes, depth, split, save/load."""

from __future__ import annotations

import numpy as np
import pytest

from tlsearch.backbones import get_spec
from tlsearch.model import augmentation_layers, build_transfer_model, preprocessing_layers
from tlsearch.strategy import ALL_BLOCKS, Strategy

RNG = np.random.default_rng(0)


def _strategy(**kw) -> Strategy:
    base = dict(backbone="tiny_cnn", image_size=32, weights="none", head_epochs=1,
                finetune_epochs=1, seed=3)
    base.update(kw)
    return Strategy(**base)


@pytest.mark.parametrize("family", ["tf", "torch", "caffe"])
def test_preprocessing_matches_keras_preprocess_input(family):
    import keras
    from keras.applications import imagenet_utils

    x = RNG.uniform(0, 255, (4, 8, 8, 3)).astype("float32")
    expected = imagenet_utils.preprocess_input(x.copy(), mode=family)
    model = keras.Sequential([keras.Input((8, 8, 3)), *preprocessing_layers(family)])
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("module", ["mobilenet_v3", "efficientnet", "convnext"])
def test_family_none_is_what_keras_does(module):
    """Backbones with built-in preprocessing: Keras's preprocess_input is the identity."""
    import importlib

    x = RNG.uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    mod = importlib.import_module(f"keras.applications.{module}")
    np.testing.assert_array_equal(mod.preprocess_input(x.copy()), x)
    assert preprocessing_layers("none") == []


def test_every_spec_family_matches_its_keras_module():
    """The registry's family is the one Keras's own module uses for that backbone."""
    import keras

    x = RNG.uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    modules = {"mobilenet_v2": "mobilenet_v2", "resnet50": "resnet", "resnet50_v2": "resnet_v2",
               "densenet121": "densenet", "xception": "xception", "inception_v3": "inception_v3",
               "mobilenet_v3_small": "mobilenet_v3", "efficientnet_b0": "efficientnet",
               "efficientnet_v2_b0": "efficientnet_v2", "convnext_tiny": "convnext"}
    import importlib

    for name, module in modules.items():
        expected = importlib.import_module(f"keras.applications.{module}").preprocess_input(
            x.copy())
        layers = preprocessing_layers(get_spec(name).family)
        got = keras.Sequential([keras.Input((4, 4, 3)), *layers])(x) if layers else x
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, atol=1e-4,
                                   err_msg=name)


def _trainable_count(tm) -> int:
    return sum(int(np.prod(v.shape)) for v in tm.backbone.trainable_variables)


@pytest.mark.parametrize("bn_mode", ["frozen", "affine", "adapt"])
def test_trainable_variables_follow_depth_and_bn_mode(bn_mode):
    tm = build_transfer_model(_strategy(unfreeze_blocks=1, bn_mode=bn_mode), 3)
    bb = tm.backbone
    top_conv = [bb.get_layer("block3_conv1"), bb.get_layer("block3_conv2"),
                bb.get_layer("block3_proj")]
    top_bn = [bb.get_layer("block3_bn1"), bb.get_layer("block3_bn2")]
    low = [bb.get_layer("block2_conv1"), bb.get_layer("stem_conv")]
    low_bn = [bb.get_layer("block2_bn1"), bb.get_layer("stem_bn")]
    assert all(layer.trainable for layer in top_conv)
    assert not any(layer.trainable for layer in low)
    assert all(layer.trainable for layer in top_bn) == (bn_mode != "frozen")
    assert all(layer.trainable for layer in low_bn) == (bn_mode == "adapt")
    expected = sum(layer.count_params() for layer in top_conv)
    if bn_mode != "frozen":
        expected += sum(2 * layer.gamma.shape[0] for layer in top_bn)
    if bn_mode == "adapt":
        expected += sum(2 * layer.gamma.shape[0] for layer in low_bn + [bb.get_layer(
            "block1_bn1"), bb.get_layer("block1_bn2"), bb.get_layer("block2_bn2")])
    assert _trainable_count(tm) == expected
    assert tm.cacheable == (bn_mode != "adapt")


def test_depths_zero_k_and_all():
    frozen = build_transfer_model(_strategy(unfreeze_blocks=0, finetune_epochs=0), 3)
    assert frozen.suffix is None and frozen.cacheable and _trainable_count(frozen) == 0
    two = build_transfer_model(_strategy(unfreeze_blocks=2), 3)
    full = build_transfer_model(_strategy(unfreeze_blocks=ALL_BLOCKS), 3)
    assert full.prefix is None and not full.cacheable
    assert 0 < _trainable_count(two) < _trainable_count(full)
    assert _trainable_count(full) == sum(
        int(np.prod(v.shape)) for v in full.backbone.trainable_variables)
    # gradual unfreezing walks the same boundaries
    two.set_unfrozen(1)
    one = build_transfer_model(_strategy(unfreeze_blocks=1), 3)
    assert _trainable_count(two) == _trainable_count(one)


def test_bn_behaviour_in_training_graphs():
    """frozen/affine keep moving statistics; adapt updates them; only frozen keeps gamma."""
    import keras
    import tensorflow as tf

    x = RNG.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(8) % 3, 3)
    for mode, changes in (("frozen", False), ("affine", False), ("adapt", True)):
        tm = build_transfer_model(_strategy(unfreeze_blocks=1, bn_mode=mode), 3)
        bn = tm.backbone.get_layer("block3_bn1")
        before = np.asarray(bn.moving_mean).copy()
        gamma = np.asarray(bn.gamma).copy()
        backbone_vars, head_vars = tm.trainable_variables
        variables = backbone_vars + head_vars
        with tf.GradientTape() as tape:
            loss = keras.losses.categorical_crossentropy(y, tm.train_forward(x))
        grads = tape.gradient(loss, variables)
        keras.optimizers.SGD(0.5).apply_gradients(zip(grads, variables, strict=True))
        assert (not np.allclose(before, np.asarray(bn.moving_mean))) == changes, mode
        assert (not np.allclose(gamma, np.asarray(bn.gamma))) == (mode != "frozen"), mode


def test_prefix_suffix_head_equals_deployable():
    tm = build_transfer_model(_strategy(unfreeze_blocks=2, augmentation="light"), 4)
    x = RNG.uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    deploy = np.asarray(tm.deployable()(x, training=False))
    feats = tm.feature_extractor()(x)
    via_cache = np.asarray(tm.features_model()(feats, training=False))
    np.testing.assert_allclose(via_cache, deploy, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(deploy.sum(axis=1), 1.0, rtol=1e-5)


def test_pooled_backbone_builds_and_traces_each_extractor_once():
    from tlsearch.model import clear_backbone_pool

    clear_backbone_pool()
    head_only = build_transfer_model(_strategy(finetune_epochs=0), 4, reuse_backbone=True)
    extractor = head_only.feature_extractor()
    forward = head_only.traced(extractor)
    x = RNG.uniform(0, 255, (5, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(forward(x)), np.asarray(extractor(x)), rtol=1e-5,
                               atol=1e-6)
    assert forward(x[:2]).shape[0] == 2  # any batch size, one trace
    assert forward.experimental_get_tracing_count() == 1
    # The next trial on this backbone (its whole-backbone extractor, or a fine-tuning
    # trial's head warm-up on the backbone outputs) gets the same traced pass.
    again = build_transfer_model(_strategy(finetune_epochs=0, seed=3), 4, reuse_backbone=True)
    assert again.feature_extractor() is extractor and again.output_extractor() is extractor
    deeper = build_transfer_model(_strategy(unfreeze_blocks=1), 4, reuse_backbone=True)
    assert deeper.output_extractor() is extractor
    assert deeper.feature_extractor() is not extractor  # the prefix below the cut
    clear_backbone_pool()


@pytest.mark.parametrize("backbone,family_size", [("tiny_cnn", 32),
                                                   ("mobilenet_v3_small", 32)])
@pytest.mark.parametrize("augmentation", ["none", "strong"])
def test_save_load_round_trip_safe_mode(tmp_path, backbone, family_size, augmentation):
    import keras

    import tlsearch  # noqa: F401  (all a caller needs; nothing to register)

    tm = build_transfer_model(_strategy(backbone=backbone, image_size=family_size,
                                        unfreeze_blocks=1, augmentation=augmentation), 3)
    model = tm.deployable()
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    x = RNG.uniform(0, 255, (2, family_size, family_size, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded.predict(x, verbose=0)),
                               np.asarray(model.predict(x, verbose=0)), rtol=1e-6, atol=1e-7)


def test_caffe_round_trip(tmp_path):
    """The caffe family's fixed layer survives save/load and keeps its weights frozen."""
    import keras

    layers = preprocessing_layers("caffe")
    model = keras.Sequential([keras.Input((4, 4, 3)), *layers])
    assert model.trainable_variables == []
    model.save(tmp_path / "c.keras")
    loaded = keras.models.load_model(tmp_path / "c.keras", safe_mode=True)
    x = RNG.uniform(0, 255, (1, 4, 4, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


@pytest.mark.parametrize("level", ["none", "light", "medium", "strong"])
def test_augmentation_active_only_in_training(level):
    import keras

    aug = augmentation_layers(level, seed=1)
    if level == "none":
        assert aug == []
        return
    model = keras.Sequential([keras.Input((16, 16, 3)), *aug])
    x = RNG.uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(model(x, training=False)), x)
    assert not np.allclose(np.asarray(model(x, training=True)), x)
