"""The recipes table: what the script renders is what the engine builds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tlsearch import recipes

VALUES = {"seed": 7, "lr": 0.01, "weight_decay": 1e-4, "label_smoothing": 0.1}
NAMES = {"seed": "SEED", "lr": "lr"}


def _script_objects(recipe: recipes.Recipe) -> list:
    """Run a recipe's rendered source the way the standalone script does."""
    import keras
    from keras import layers

    scope = {"keras": keras, "layers": layers, "np": np, "SEED": VALUES["seed"],
             "lr": VALUES["lr"]}
    code = recipe.source("made", VALUES, NAMES)
    for call in recipe.calls:  # optimizers and losses are written under keras.
        if not call.target.startswith("layers."):
            code = code.replace(call.target, "keras." + call.target)
    exec(compile(code, "recipe", "exec"), scope)  # noqa: S102 - our own generated code
    return scope["made"]


def _config(obj) -> dict:
    config = obj.get_config()
    if "learning_rate" in config:  # an optimizer: Keras numbers the names of later ones
        config.pop("name")
    return config


@pytest.mark.parametrize("table,key", [
    *[("AUGMENTATIONS", k) for k in recipes.AUGMENTATIONS],
    *[("PREPROCESSING", k) for k in recipes.PREPROCESSING],
    *[("OPTIMIZERS", k) for k in recipes.OPTIMIZERS],
    *[("LOSSES", k) for k in recipes.LOSSES],
])
def test_the_rendered_source_builds_what_the_engine_builds(table, key):
    recipe = getattr(recipes, table)[key]
    assert recipe.description and "\n" not in recipe.description
    built, scripted = recipe.build(VALUES), _script_objects(recipe)
    assert [type(b) for b in built] == [type(s) for s in scripted]
    for b, s in zip(built, scripted, strict=True):
        assert _config(b) == _config(s), key
        if getattr(b, "weights", None) and hasattr(b, "get_weights"):
            for wb, ws in zip(b.get_weights(), s.get_weights(), strict=True):
                np.testing.assert_array_equal(wb, ws)


def test_the_scripts_schedule_is_the_engines_function():
    scope = {"math": math}
    exec(recipes.schedule_source(), scope)  # noqa: S102
    for schedule in recipes.SCHEDULES:
        for epoch in range(6):
            args = (schedule, epoch, 6, 2, 0.25)
            assert scope["lr_factor"](*args) == recipes.lr_factor(*args)
    assert recipes.lr_factor("cosine", 0, 5, 0, 1.0) == 1.0  # starts at the base rate
    assert recipes.lr_factor("cosine", 5, 5, 0, 1.0) == pytest.approx(0.1)  # ends at a tenth


def test_the_loss_follows_the_imbalance_remedy():
    assert recipes.loss_recipe("focal") is recipes.LOSSES["focal"]
    for remedy in ("none", "class_weight", "oversample"):
        assert recipes.loss_recipe(remedy) is recipes.LOSSES["crossentropy"]


def _named_layers(model, prefix: str) -> dict:
    found, stack = {}, [model]
    while stack:
        layer = stack.pop()
        if layer.name.startswith(prefix):
            found[layer.name] = layer
        stack.extend(getattr(layer, "layers", []))
    return found


def test_the_generated_script_and_the_engine_agree_on_one_epoch(tmp_path):
    """The same recipe trained one epoch by the standalone script and by the engine, on
    the same images: both learn, to within a few images of each other, and deploy the
    same preprocessing layers."""
    import re
    import subprocess
    import sys

    import keras

    from tests.conftest import write_colour_dataset
    from tlsearch.backbones import get_spec
    from tlsearch.data import make_split, scan
    from tlsearch.report.script import keras_snippet
    from tlsearch.strategy import Strategy
    from tlsearch.train import run_trial
    from tlsearch.trial_data import TrialData

    data = write_colour_dataset(tmp_path / "data", {"red": 12, "green": 12, "blue": 12})
    strategy = Strategy("tiny_cnn", 32, weights="none", unfreeze_blocks=0, head_epochs=1,
                        batch_size=8, augmentation="light", head_dropout=0.0, seed=1)
    script = tmp_path / "recipe.py"
    script.write_text(keras_snippet(strategy.to_dict(), get_spec("tiny_cnn"),
                                    data_dir=str(data), val_fraction=0.25))
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    scripted = float(re.search(r"best validation balanced accuracy ([\d.]+)", out.stdout)[1])

    split = make_split(scan(data), val_fraction=0.25, seed=0)
    result = run_trial(strategy, TrialData.from_split(data, split, tmp_path / "cache"))
    assert result.state == "complete"
    # 9 validation images a side (3 per class): the two splits differ, the recipe not.
    assert scripted > 0.6 and result.objective > 0.6
    assert abs(scripted - result.objective) <= 0.34
    saved = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    script_pre, engine_pre = (_named_layers(m, "preprocess_") for m in (saved, result.model))
    assert script_pre and script_pre.keys() == engine_pre.keys()
    for name, layer in script_pre.items():
        assert layer.get_config() == engine_pre[name].get_config()
