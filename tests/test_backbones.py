"""Registry, cut points, weights loading and the offline message."""

from __future__ import annotations

import numpy as np
import pytest

from tlsearch import backbones as B

FAST = {"tiny_cnn", "mobilenet_v3_small", "mobilenet_v2", "efficientnet_lite0"}
ALL_SPECS = B.list_specs(include_test=True)


def _param(spec):
    marks = () if spec.name in FAST else (pytest.mark.slow,)
    return pytest.param(spec, id=spec.name, marks=marks)


def _size(spec) -> int:
    return max(spec.min_size, 32)


def test_registry_has_required_backbones():
    names = {s.name for s in ALL_SPECS}
    required = {
        "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
        "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_v2_b0",
        "efficientnet_v2_b1", "efficientnet_v2_b2", "efficientnet_v2_b3", "resnet50_v2",
        "densenet121", "convnext_tiny", "xception", "inception_v3", "tiny_cnn",
    }
    assert required <= names
    assert "tiny_cnn" not in {s.name for s in B.list_specs()}


def test_unknown_backbone_is_one_line():
    with pytest.raises(B.UnknownBackboneError) as err:
        B.get_spec("resnet9000")
    assert "resnet9000" in str(err.value) and "\n" not in str(err.value)


def test_cost_scales_with_area():
    spec = B.get_spec("mobilenet_v2")
    assert spec.cost(112) == pytest.approx(spec.gflops / 4)


@pytest.mark.parametrize("spec", [_param(s) for s in ALL_SPECS])
def test_blocks_and_split_equal_full_backbone(spec):
    import keras

    model = B.build_backbone(spec, _size(spec), "none")
    blocks = B.find_blocks(model, spec.block_regex)
    assert len(blocks) == spec.n_blocks
    assert model.count_params() == spec.params
    x = np.random.default_rng(0).uniform(-1, 1, (2, _size(spec), _size(spec), 3)).astype("float32")
    full = np.asarray(model(x, training=False))
    depths = range(1, len(blocks) + 1) if spec.name in FAST else (1, 2, len(blocks))
    for k in depths:
        cut = blocks.cut_for(k)
        tensor = next(op for op in model.operations if op.name == cut).output
        prefix = keras.Model(model.inputs, tensor)
        suffix = keras.Model(tensor, model.outputs)
        composed = np.asarray(suffix(prefix(x, training=False), training=False))
        np.testing.assert_allclose(composed, full, rtol=1e-5, atol=1e-5)


def test_cut_for_edges():
    blocks = B.Blocks(("a", "b", "c"), ("a..", "b..", "c.."))
    assert blocks.cut_for(0) == "<output>"
    assert blocks.cut_for(1) == "c"
    assert blocks.cut_for(3) == "a"
    assert blocks.cut_for(7) == "a"
    assert blocks.cut_for(-1) is None


def test_weights_path_really_loaded(tmp_path):
    spec = B.get_spec("tiny_cnn")
    source = B.build_backbone(spec, 32, "none", seed=1)
    path = tmp_path / "tiny.weights.h5"
    source.save_weights(str(path))
    loaded = B.build_backbone(spec, 32, str(path), seed=2)
    other = B.build_backbone(spec, 32, "none", seed=2)
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(source(x)))
    assert not np.allclose(np.asarray(other(x)), np.asarray(source(x)))
    assert B.weights_identity(spec, str(path), size=32, seed=0).startswith("file:")


def test_weights_path_missing_or_wrong(tmp_path):
    spec = B.get_spec("tiny_cnn")
    with pytest.raises(B.WeightsError, match="does not exist"):
        B.build_backbone(spec, 32, str(tmp_path / "nope.weights.h5"))
    other = B.build_backbone(B.get_spec("mobilenet_v3_small"), 32, "none")
    wrong = tmp_path / "mnv3.weights.h5"
    other.save_weights(str(wrong))
    with pytest.raises(B.WeightsError) as err:
        B.build_backbone(spec, 32, str(wrong))
    assert "does not fit tiny_cnn" in str(err.value) and "\n" not in str(err.value)


def test_offline_imagenet_message(tmp_path, monkeypatch):
    """No network, no cached file: one line naming the file, the cache and the way out."""
    from keras.src.utils import file_utils

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    spec = B.get_spec("mobilenet_v2")
    with pytest.raises(B.WeightsUnavailableError) as err:
        B.build_backbone(spec, 96, "imagenet")
    msg = str(err.value)
    assert "\n" not in msg
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5" in msg
    assert str(tmp_path / "kh" / "models") in msg
    assert "--weights none" in msg


def test_weights_cached_reads_keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    spec = B.get_spec("efficientnet_b0")
    assert not B.weights_cached(spec)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "efficientnetb0_notop.h5").write_bytes(b"x")
    assert B.weights_cached(spec)
