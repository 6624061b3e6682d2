"""One durability rule for every rewritten file: all of the new one, or the old one."""

from __future__ import annotations

import json

import pytest

from tlsearch.atomic import atomic_write, replacing, write_json


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    write_json(target, {"state": "complete"})
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_text('{"state": "pru')  # killed half way
        raise RuntimeError("disk gone")
    assert json.loads(target.read_text()) == {"state": "complete"}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_the_temporary_keeps_the_name_writers_check(tmp_path):
    with replacing(tmp_path / "head.weights.h5") as tmp:
        assert tmp.name.endswith(".head.weights.h5") and tmp.parent == tmp_path
        tmp.write_bytes(b"h5")
    atomic_write(tmp_path / "labels.json", "[]")
    assert (tmp_path / "head.weights.h5").read_bytes() == b"h5"
    assert (tmp_path / "labels.json").read_text() == "[]"
