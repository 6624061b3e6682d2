"""Disk full / read-only: a clear error, the storage intact, resumable afterwards."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from tests.reliability.helpers import load_study, tiny_search
from tlsearch.cli import app

pytestmark = pytest.mark.reliability


def _args(tmp_path, studies, cache, trials):
    return ["search", str(tmp_path / "data"), "--space", str(tmp_path / "tiny.yaml"),
            "--study", "d", "--out", str(studies), "--weights", "none", "--cache-dir",
            str(cache), "--pruner", "none", "--no-baselines", "--trials", str(trials)]


def _mount_tmpfs(path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(path)], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_full_cache_disk_is_one_line_and_resumable(tmp_path, figures, monkeypatch):
    _, studies, _ = tiny_search(tmp_path, head_epochs=1, finetune_epochs=1)
    runner = CliRunner()
    first = runner.invoke(app, _args(tmp_path, studies, tmp_path / "cache", 1))
    assert first.exit_code == 0, first.output
    small = tmp_path / "small"
    real_disk = _mount_tmpfs(small, "64k")  # far too small for the decode cache
    if not real_disk:  # no mount here: simulate the kernel's answer
        import tlsearch.features as features

        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(small / "entry"))

        monkeypatch.setattr(features.FeatureCache, "_write", full)
        monkeypatch.setattr("tlsearch.data.decode_cached", full)
    try:
        result = runner.invoke(app, _args(tmp_path, studies, small, 2))
    finally:
        if real_disk:
            subprocess.run(["umount", str(small)], capture_output=True, timeout=30)
        monkeypatch.undo()
    lines = [line for line in result.output.strip().splitlines() if "error" in line]
    figures.add("full disk simulated by", "a 64 KiB tmpfs" if real_disk else "ENOSPC injection")
    figures.add("exit code on a full disk", result.exit_code, "!= 0")
    figures.add("traceback shown", "Traceback" in result.output, "False")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert lines and "No space left on device" in lines[0] and "re-run" in lines[0]
    before = sum(t.state.name == "COMPLETE" for t in load_study(studies, "d").trials)
    again = runner.invoke(app, _args(tmp_path, studies, tmp_path / "cache", 2))
    assert again.exit_code == 0, again.output
    after = sum(t.state.name == "COMPLETE" for t in load_study(studies, "d").trials)
    figures.add("completed trials kept through the failure", f"{before} -> {after}", ">=")
    assert before >= 1 and after == 2


def test_read_only_study_folder_is_one_line(tmp_path, figures):
    _, studies, _ = tiny_search(tmp_path, head_epochs=1, finetune_epochs=1)
    runner = CliRunner()
    assert runner.invoke(app, _args(tmp_path, studies, tmp_path / "cache", 1)).exit_code == 0
    ro = tmp_path / "ro"
    shutil.copytree(studies, ro / "studies")
    mounted = _mount_tmpfs(ro / "mnt", "1m")
    if not mounted:
        pytest.skip("cannot mount a filesystem here to make one read-only (root ignores "
                    "file modes)")
    try:
        shutil.copytree(studies, ro / "mnt" / "studies")
        subprocess.run(["mount", "-o", "remount,ro", str(ro / "mnt")], check=True,
                       capture_output=True, timeout=30)
        result = runner.invoke(app, _args(tmp_path, ro / "mnt" / "studies",
                                          tmp_path / "cache", 2))
    finally:
        subprocess.run(["umount", str(ro / "mnt")], capture_output=True, timeout=30)
    figures.add("read-only study folder: exit code", result.exit_code, "!= 0")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "Read-only file system" in result.output
