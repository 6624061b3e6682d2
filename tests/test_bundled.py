"""The bundled pretrained backbone: asset, provenance, loading, and real transfer."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from tlsearch import bundled

BACKBONE = "mobilenet_v3_small"

# Measured by the committed run (see the provenance JSON), with slack: on the raw pooled
# features a trained head sees, the linear probe on the demo digits scores 0.726 with the
# bundled weights and 0.100 (chance) with random init, a margin of 0.626. Standardized,
# random init scores 0.885 (its features are a near-linear map of the pixels, which
# score 0.876) against 0.785 for the bundled weights; that comparison is not asserted.
MIN_BUNDLED = 0.5
MIN_MARGIN_RAW = 0.25


@pytest.fixture(scope="module")
def weights_path():
    path = bundled.bundled_weights_path(BACKBONE)
    assert path is not None, f"no bundled weights for {BACKBONE} in {bundled.ASSETS}"
    return path


@pytest.fixture(scope="module")
def record():
    doc = bundled.provenance(BACKBONE)
    assert doc is not None, f"no provenance JSON for {BACKBONE} in {bundled.ASSETS}"
    return doc


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    from tlsearch.demo import write_demo_data

    path = tmp_path_factory.mktemp("probe") / "demo"
    write_demo_data(path, size=64)
    return path


def test_asset_matches_its_provenance(weights_path, record):
    assert record["backbone"] == BACKBONE
    assert record["weights_file"] == weights_path.name
    assert hashlib.sha256(weights_path.read_bytes()).hexdigest() == record["sha256"]
    assert 1_000_000 < weights_path.stat().st_size < 10_000_000
    for key in ("command", "date", "seed", "size", "steps", "source_images", "source_accuracy",
                "linear_probe", "versions"):
        assert key in record, key
    assert record["command"].startswith("python -m tlsearch.pretrain --out ")
    assert not any("digit" in source for source in record["source_images"])
    probe = record["linear_probe"]
    assert probe["bundled_raw"] >= probe["random_init_raw"] + MIN_MARGIN_RAW


def test_provenance_file_is_named_like_the_script_writes_it(weights_path):
    from tlsearch.pretrain import provenance_path

    assert provenance_path(weights_path) == bundled.provenance_path(BACKBONE)


def test_backbones_without_bundled_weights():
    assert bundled.bundled_weights_path("resnet50") is None
    assert bundled.provenance("resnet50") is None


def test_bundled_module_does_not_import_tensorflow():
    code = "import sys, tlsearch.bundled; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_source_photos_load_offline_and_crops_are_deterministic():
    from tlsearch.pretrain import GRID, SOURCE_IMAGES, load_source_images, sample_crops

    images = load_source_images()
    assert len(images) == len(SOURCE_IMAGES)
    assert all(im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3 for im in images)
    a, labels = sample_crops(images, 16, 32, np.random.default_rng(0))
    b, again = sample_crops(images, 16, 32, np.random.default_rng(0))
    assert a.shape == (16, 32, 32, 3) and 0 <= a.min() and a.max() <= 255
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(labels, again)
    assert labels.min() >= 0 and labels.max() < len(images) * GRID * GRID


@pytest.fixture(scope="module")
def backbones(weights_path):
    from tlsearch.backbones import build_backbone, get_spec

    spec = get_spec(BACKBONE)
    return {"bundled": build_backbone(spec, 64, str(weights_path)),
            "random": build_backbone(spec, 64, "none", seed=0)}


def test_bundled_weights_load_and_differ_from_random_init(backbones):
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    loaded = np.asarray(backbones["bundled"](x, training=False))
    random = np.asarray(backbones["random"](x, training=False))
    assert np.isfinite(loaded).all()
    assert not np.allclose(loaded, random)
    # Random init shrinks activations to ~1e-10; trained weights keep them usable.
    assert np.abs(loaded).mean() > 1e-3 > np.abs(random).mean()


def test_bundled_features_separate_the_demo_digits(backbones, demo_dir):
    """The cheap version of the transfer test: same data, split and features, but a
    logistic regression stopped at 200 iterations (the full protocol is slow-marked)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    from tlsearch.pretrain import _demo_arrays, _features

    x_train, y_train, x_val, y_val = _demo_arrays(64, demo_dir)
    scores = {}
    for name, backbone in backbones.items():
        probe = LogisticRegression(max_iter=200)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            probe.fit(_features(backbone, x_train), y_train)
        scores[name] = balanced_accuracy_score(y_val, probe.predict(_features(backbone, x_val)))
    assert scores["random"] < 0.2
    assert scores["bundled"] >= MIN_BUNDLED
    assert scores["bundled"] >= scores["random"] + MIN_MARGIN_RAW


@pytest.mark.slow
def test_bundled_weights_transfer_to_the_demo_digits(weights_path, demo_dir):
    """Real transfer: the frozen bundled backbone beats the same one randomly initialised.

    The full `linear_probe_score` protocol on the raw pooled features, which is what a
    classification head trained on a frozen backbone sees (the issue's measurement).
    """
    from tlsearch.pretrain import linear_probe_score

    bundled_score = linear_probe_score(str(weights_path), data_dir=demo_dir, standardize=False)
    random_score = linear_probe_score("none", data_dir=demo_dir, standardize=False)
    assert random_score < 0.2
    assert bundled_score >= MIN_BUNDLED
    assert bundled_score >= random_score + MIN_MARGIN_RAW


@pytest.mark.slow
def test_pretraining_reproduces_probe_score(tmp_path, record):
    """Rerun the committed command (minutes) and compare the probe scores."""
    out = tmp_path / "rerun.tlsearch.weights.h5"
    cmd = [sys.executable, "-m", "tlsearch.pretrain", "--out", str(out),
           "--steps", str(record["steps"]), "--seed", str(record["seed"]),
           "--size", str(record["size"])]
    subprocess.run(cmd, check=True, timeout=1800)
    rerun = json.loads((tmp_path / "rerun.tlsearch.json").read_text())
    for key in ("bundled", "bundled_raw"):
        assert rerun["linear_probe"][key] == pytest.approx(record["linear_probe"][key], abs=0.05)
