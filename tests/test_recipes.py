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
