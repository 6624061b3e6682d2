"""Hostile names and files: markup in names stays text; crafted models are refused."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.conftest import TINY_SPACE, write_colour_dataset
from tlsearch.cli import app

pytestmark = pytest.mark.reliability

IMG = "<img src=x onerror=alert(1)>"
RICH = "[bold red]rich"
JINJA = "{{ 7*7 }}"
QUOTES = "quote'\""
RTL = "rtl\u202egnp.exe"
NEWLINE = "new\nline"


def test_hostile_class_names_are_text_in_terminal_and_report(tmp_path, figures):
    data = write_colour_dataset(tmp_path / "data", {IMG: 12, RICH: 12, JINJA: 12,
                                                    QUOTES: 12, RTL: 12, NEWLINE: 12})
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=1, finetune_epochs=1).replace(
        "[0, 1]", "[0]"))
    runner = CliRunner()
    result = runner.invoke(app, ["search", str(data), "--space", str(space), "--study", "h",
                                 "--out", str(tmp_path / "studies"), "--weights", "none",
                                 "--cache-dir", str(tmp_path / "c"), "--trials", "1",
                                 "--no-baselines"])
    assert result.exit_code == 0, result.output
    doctor = runner.invoke(app, ["doctor", str(data)])
    report = runner.invoke(app, ["report", "h", "--studies", str(tmp_path / "studies"),
                                 "--out", str(tmp_path / "h.html")])
    html = (tmp_path / "h.html").read_text()
    terminal = doctor.output.replace("\n", "")
    figures.add("raw <img> tags from class names in the report", html.count(IMG), "0")
    figures.add("raw right-to-left overrides in the report", html.count("\u202e"), "0")
    figures.add("Jinja in names evaluated (49 instead of {{ 7*7 }})", JINJA not in html, "False")
    figures.add("Rich markup in names swallowed by the terminal", RICH not in terminal, "False")
    assert report.exit_code == 0 and doctor.exit_code == 0
    assert IMG not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "\u202e" not in html and JINJA in html
    assert RICH in terminal


def test_crafted_models_are_refused_and_run_no_code(tmp_path, figures):
    """A Lambda layer and an unregistered class in a .keras file: `predict` refuses both
    with one line, and the sentinel their code would write never appears."""
    import keras
    import numpy as np
    from PIL import Image

    sentinel = tmp_path / "pwned"
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    inputs = keras.Input((8, 8, 3))
    # The path is a literal inside the function's code, which is what a saved Lambda keeps.
    writes = eval(f"lambda x: (__import__('pathlib').Path({str(sentinel)!r})"  # noqa: S307
                  ".write_text('ran'), x)[1]")
    lam = keras.Model(inputs, keras.layers.Lambda(writes)(inputs))
    folder = tmp_path / "lambda"
    folder.mkdir()
    lam.save(folder / "model.keras")
    sentinel.unlink(missing_ok=True)

    @keras.saving.register_keras_serializable(package="evil")
    class Evil(keras.layers.Layer):
        def call(self, x):
            sentinel.write_text("ran")
            return x

    evil = keras.Model(inputs, Evil()(inputs))
    folder2 = tmp_path / "unknown"
    folder2.mkdir()
    evil.save(folder2 / "model.keras")
    sentinel.unlink(missing_ok=True)
    keras.saving.get_custom_objects().clear()  # a fresh process would not know `Evil`
    refused = 0
    for path, why in ((folder, "Lambda"), (folder2, "refused")):
        (path / "labels.json").write_text('["a", "b"]')
        (path / "strategy.json").write_text('{"image_size": 8}')
        result = CliRunner().invoke(app, ["predict", str(path), str(image)])
        refused += int(result.exit_code != 0 and why in result.output
                       and "Traceback" not in result.output)
    figures.add("crafted models refused by predict", refused, "2")
    figures.add("sentinel written by crafted code", sentinel.exists(), "False")
    assert refused == 2 and not sentinel.exists()
