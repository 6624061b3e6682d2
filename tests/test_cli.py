"""The CLI surface: --help without TensorFlow, commands on real folders, bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tlsearch.cli import app

COMMANDS = ["demo-data", "doctor", "backbones", "search", "resume", "status", "report", "export",
            "predict"]


def test_help_never_imports_tensorflow_or_the_numeric_stack():
    """`--help` (and shell start-up) pays for Typer and Rich only: the choice names come
    from tlsearch.options, not from the modules that act on them."""
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom tlsearch.cli import app\n"
        f"for cmd in [[]] + [[c] for c in {COMMANDS!r}]:\n"
        "    r = CliRunner().invoke(app, cmd + ['--help'])\n"
        "    assert r.exit_code == 0, (cmd, r.output)\n"
        "import tlsearch\n"
        "heavy = {'tensorflow', 'keras', 'numpy', 'PIL', 'optuna', 'sklearn', 'scipy'}\n"
        "assert not heavy & set(sys.modules), sorted(heavy & set(sys.modules))\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_demo_data_then_doctor(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["demo-data", str(tmp_path / "demo"), "--size", "32"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["doctor", str(tmp_path / "demo"), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["usable"] and len(report["classes"]) == 8  # the textures demo by default


def test_doctor_unusable_dataset_is_one_line(tmp_path):
    (tmp_path / "only" / "a").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "only" / "a" / "x.png")
    r = CliRunner().invoke(app, ["doctor", str(tmp_path / "only")])
    assert r.exit_code == 1
    assert "unusable dataset" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("args", [
    ["doctor", "/definitely/missing"],
    ["search", "/definitely/missing"],
    ["demo-data", "x", "--size", "0"],
    ["doctor", "--val-fraction", "-1", "."],
    ["search", ".", "--pruner", "nonsense"],
    ["search", ".", "--timeout", "-5"],
])
def test_bad_arguments_exit_nonzero_without_traceback(args, tmp_path):
    r = CliRunner().invoke(app, args)
    assert r.exit_code != 0
    assert "Traceback" not in r.output


def test_file_instead_of_folder(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    r = CliRunner().invoke(app, ["doctor", str(f)])
    assert r.exit_code != 0 and "Traceback" not in r.output


def test_backbones_lists_registry():
    r = CliRunner().invoke(app, ["backbones"])
    assert r.exit_code == 0
    assert "mobilenet_v3_small" in r.output and "tiny_cnn" not in r.output
    lite = next(line for line in r.output.splitlines() if "efficientnet_lite0" in line)
    assert "offline" in lite  # ImageNet weights from its installed package
    r = CliRunner().invoke(app, ["backbones", "--include-test"])
    assert "tiny_cnn" in r.output


@pytest.fixture
def offline_imagenet(tmp_path, monkeypatch):
    """A space whose backbone needs Keras's ImageNet download, an empty Keras cache, and
    a machine that says it is offline (inherited by worker processes)."""
    from tests.conftest import write_colour_dataset

    data = write_colour_dataset(tmp_path / "data", {"red": 10, "green": 10, "blue": 10})
    space = tmp_path / "mnv3.yaml"
    space.write_text("name: mnv3\nbackbones:\n  mobilenet_v3_small: [32]\nunfreeze_blocks: 0\n"
                     "head_epochs: 1\nfinetune_epochs: 1\nbatch_size: 16\n")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras"))
    monkeypatch.setenv("TLSEARCH_OFFLINE", "1")
    return data, space


def _one_line_error(result, *must_contain: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for text in must_contain:
        assert text in result.output.replace("\n", ""), result.output


@pytest.mark.parametrize("extra", [[], ["--workers", "2"], ["--no-isolate"]],
                         ids=["default", "workers-2", "no-isolate"])
def test_default_weights_offline_is_one_line(tmp_path, offline_imagenet, extra):
    data, space = offline_imagenet
    common = ["--out", str(tmp_path / "studies")]
    args = ["search", str(data), "--space", str(space), "--study", "off", "--trials", "1",
            "--cache-dir", str(tmp_path / "cache"), *common, *extra]
    result = CliRunner().invoke(app, args)  # --weights: its default, imagenet
    _one_line_error(result, "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
                    "empty-keras")
    result = CliRunner().invoke(app, ["resume", "off", "--trials", "2", *common])
    _one_line_error(result, "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5")


def test_rank_with_default_weights_offline_is_one_line(tmp_path, offline_imagenet):
    data, space = offline_imagenet
    result = CliRunner().invoke(app, ["rank", str(data), "--space", str(space),
                                      "--cache-dir", str(tmp_path / "cache")])
    _one_line_error(result, "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5")


def test_storage_urls_get_an_installed_driver(monkeypatch):
    import importlib.util

    from tlsearch import search as study

    installed = {"psycopg2", "pymysql"}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: object() if name in installed else None)
    assert study.storage_url_with_driver("postgresql://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert study.storage_url_with_driver("mysql://u@h/db") == "mysql+pymysql://u@h/db"
    assert study.storage_url_with_driver("postgresql+psycopg://h/db") == "postgresql+psycopg://h/db"
    installed.add("psycopg")
    assert study.storage_url_with_driver("postgresql://h/db") == "postgresql+psycopg://h/db"
    installed.clear()
    with pytest.raises(study.SearchError, match=r"pip install 'tlsearch\[mysql\]'"):
        study.storage_url_with_driver("mysql://h/db")


def test_a_storage_error_hides_the_password(tmp_path):
    from tlsearch import search as study

    with pytest.raises(study.SearchError) as err:
        study.make_storage("postgresql://user:s3cret@127.0.0.1:1/db", tmp_path)
    assert "s3cret" not in str(err.value) and "cannot open storage" in str(err.value)


def test_version_and_the_studies_folder_flag_everywhere(tmp_path):
    from tlsearch import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"tlsearch {__version__}"
    for command in ("search", "resume", "status", "report", "export"):
        text = CliRunner().invoke(app, [command, "--help"]).output
        assert "--studies" in text, command


def test_test_fraction_flag_gives_a_held_out_score_everywhere(tmp_path):
    from tests.conftest import TINY_SPACE, write_colour_dataset

    data = write_colour_dataset(tmp_path / "data", {"red": 16, "green": 16, "blue": 16})
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=1, finetune_epochs=1))
    studies = ["--studies", str(tmp_path / "studies")]
    result = CliRunner().invoke(app, [
        "search", str(data), "--space", str(space), "--study", "tf", "--trials", "2",
        "--weights", "none", "--cache-dir", str(tmp_path / "cache"), "--no-baselines",
        "--test-fraction", "0.25", *studies])
    assert result.exit_code == 0, result.output
    assert "held-out test balanced_accuracy" in result.output.replace("\n", " ")
    status = json.loads(CliRunner().invoke(app, ["status", "tf", "--json", *studies]).stdout)
    assert status["test"]["n_test"] == 12  # a quarter of each class of 16
    best = str(status["best"]["number"])
    assert set(status["test"]["scores"][best]) >= {"value", "low", "high", "metrics"}
    # The raw-pixel yardstick is scored beside it (colours: pixels separate them).
    assert status["test"]["pixels"]["test"] == 1.0 and "raw pixels" in result.output
    from tlsearch.report import build_report

    html = build_report(tmp_path / "studies" / "tf", tmp_path / "r.html").read_text()
    assert 'id="pixels"' in html and "Raw pixels do as well" in html  # 1.0: nothing beats it
    result = CliRunner().invoke(app, ["export", "tf", "--out", str(tmp_path / "x"), *studies])
    assert result.exit_code == 0, result.output
    assert "Held-out test of this exported model (12 images" in (
        tmp_path / "x" / "MODEL_CARD.md").read_text()
    # Calibration never changes a class: one view of the export scores as the trial did.
    result = CliRunner().invoke(app, ["export", "tf", "--out", str(tmp_path / "y"), "--no-tta",
                                      *studies])
    exported = json.loads((tmp_path / "y" / "export.json").read_text())
    assert exported["exported_test"]["value"] == pytest.approx(exported["test"]["value"])


def test_a_search_prints_no_library_chatter(tmp_path):
    """TensorFlow, absl, oneDNN, CUDA and Keras warnings never reach the terminal: the
    CLI runs in a clean environment (none of the TF_* settings tests inherit)."""
    import os
    import re

    from tests.conftest import TINY_SPACE, write_colour_dataset

    write_colour_dataset(tmp_path / "data", {"red": 10, "green": 10})
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE.format(head_epochs=1, finetune_epochs=1))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TF_", "TLSEARCH_", "PYTHONWARNINGS"))}
    env["TLSEARCH_CACHE"] = str(tmp_path / "cache")
    done = subprocess.run(
        [sys.executable, "-m", "tlsearch.cli", "search", "data", "--space", "tiny.yaml",
         "--weights", "none", "--trials", "1", "--no-baselines", "--study", "q"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    chatter = re.compile(r"absl|oneDNN|onednn|cuda|cuInit|Warning|WARNING|I0000|E0000|"
                         r"tensorflow/|Traceback")
    noisy = [line for line in (done.stdout + done.stderr).splitlines() if chatter.search(line)]
    assert not noisy, noisy


def test_a_bad_weights_value_is_one_line_for_every_command_that_takes_it(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for command in ("search", "rank"):
        result = CliRunner().invoke(app, [command, str(data), "--weights", "nope.h5"])
        _one_line_error(result, "--weights 'nope.h5': not imagenet, none, auto or an existing")


def test_every_choice_flag_offers_what_the_library_defines():
    from tlsearch.cli import Engine, KtOracle, Metric, Pruner
    from tlsearch.metrics import OBJECTIVES
    from tlsearch.search import ENGINES, ORACLES, PRUNERS

    for choice, values in ((Pruner, PRUNERS), (Engine, ENGINES), (KtOracle, ORACLES),
                           (Metric, OBJECTIVES)):
        assert [c.value for c in choice] == list(values)
