"""Bad arguments: every command, wrong inputs: one line, exit code != 0, no traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.conftest import write_colour_dataset
from tlsearch.cli import app

pytestmark = pytest.mark.reliability


def test_every_command_answers_bad_input_in_one_line(tmp_path, figures):
    data = write_colour_dataset(tmp_path / "data", {"a": 6, "b": 6})
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    missing = tmp_path / "missing"
    studies = ["--out", str(tmp_path / "studies")]
    search = ["search", str(data), "--weights", "none", "--cache-dir", str(tmp_path / "c"),
              "--study", "bad", *studies]
    cases = {
        "doctor: missing path": ["doctor", str(missing)],
        "doctor: a file": ["doctor", str(a_file)],
        "doctor: negative fraction": ["doctor", str(data), "--val-fraction", "-1"],
        "rank: missing path": ["rank", str(missing)],
        "rank: unknown space": ["rank", str(data), "--space", "nope"],
        "search: missing path": ["search", str(missing)],
        "search: a file": ["search", str(a_file)],
        "search: zero trials": search + ["--trials", "0"],
        "search: negative timeout": search + ["--timeout", "-5"],
        "search: zero workers": search + ["--workers", "0"],
        "search: unknown storage scheme": search + ["--storage", "redis://localhost/0"],
        "search: unreachable database": search + [
            "--storage", "postgresql+psycopg2://u:p@127.0.0.1:1/none"],
        "search: unknown pruner": search + ["--pruner", "magic"],
        "search: missing weights file": search + ["--weights", str(missing / "w.h5")],
        "search: bad --set": search + ["--set", "nonsense"],
        "search: zero keep-top": search + ["--keep-top-backbones", "0"],
        "resume: unknown study": ["resume", "nope", *studies],
        "status: unknown study": ["status", "nope", *studies],
        "report: unknown study": ["report", "nope", "--studies", str(tmp_path / "studies")],
        "export: unknown study": ["export", "nope", "--studies", str(tmp_path / "studies"),
                                  "--out", str(tmp_path / "x")],
        "predict: missing model": ["predict", str(missing), str(data)],
        "predict: a file as model": ["predict", str(a_file), str(data)],
        "demo-data: zero size": ["demo-data", str(tmp_path / "d"), "--size", "0"],
    }
    runner = CliRunner()
    bad = []
    for label, args in cases.items():
        result = runner.invoke(app, args)
        text = result.output.strip()
        uncaught = result.exception is not None and not isinstance(result.exception,
                                                                   SystemExit)
        if result.exit_code == 0 or uncaught or "Traceback" in text or \
                len(text.splitlines()) > 8:
            bad.append((label, result.exit_code, repr(result.exception), text[-300:]))
    figures.add("bad invocations tried", len(cases))
    figures.add("answered with a short error and exit code != 0", len(cases) - len(bad),
                str(len(cases)))
    assert not bad, bad
