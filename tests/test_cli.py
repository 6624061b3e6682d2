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


def test_help_never_imports_tensorflow():
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom tlsearch.cli import app\n"
        f"for cmd in [[]] + [[c] for c in {COMMANDS!r}]:\n"
        "    r = CliRunner().invoke(app, cmd + ['--help'])\n"
        "    assert r.exit_code == 0, (cmd, r.output)\n"
        "import tlsearch\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
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
    assert report["usable"] and len(report["classes"]) == 10


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
    r = CliRunner().invoke(app, ["backbones", "--include-test"])
    assert "tiny_cnn" in r.output
