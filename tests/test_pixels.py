"""The raw-pixel yardstick: fitted on train, scored on validation and test."""

from __future__ import annotations

from tests.conftest import write_colour_dataset
from tlsearch.data import make_split, scan
from tlsearch.pixels import pixel_probe


def test_pixels_separate_colours_and_the_sample_is_stratified(tmp_path):
    data = write_colour_dataset(tmp_path / "d", {"red": 20, "green": 20, "blue": 20})
    split = make_split(scan(data), val_fraction=0.25, test_fraction=0.25, seed=0)
    probe = pixel_probe(data, split, "balanced_accuracy")
    assert probe["val"] == 1.0 and probe["test"] == 1.0 and probe["size"] == 32
    small = pixel_probe(data, split, "accuracy", max_train=9)
    assert small["n_train"] == 9 and small["val"] is not None
    no_test = make_split(scan(data), val_fraction=0.25, seed=0)
    assert pixel_probe(data, no_test, "balanced_accuracy")["test"] is None
