"""`--weights auto`: ImageNet when cached, else bundled, else left out (or random, loudly)."""

from __future__ import annotations

from tlsearch import backbones as B
from tlsearch import bundled


def test_auto_prefers_cached_imagenet(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    spec = B.get_spec("efficientnet_b0")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "efficientnetb0_notop.h5").write_bytes(b"x")
    assert B.resolve_auto_weights(spec, 224) == "imagenet"


def test_auto_offline_uses_bundled_or_leaves_out(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("TLSEARCH_OFFLINE", "1")
    assert B.resolve_auto_weights(B.get_spec("mobilenet_v2"), 96) is None
    fake = tmp_path / "bundled.weights.h5"
    fake.write_bytes(b"w")
    monkeypatch.setattr(bundled, "bundled_weights_path",
                        lambda name: fake if name == "mobilenet_v3_small" else None)
    assert B.resolve_auto_weights(B.get_spec("mobilenet_v3_small"), 64) == str(fake)
