"""The restricted reader of legacy PyTorch files: the real file, and what it refuses."""

from __future__ import annotations

import hashlib
import os
import pickle
from collections import OrderedDict

import pytest

from tlsearch.efficientnet_lite import LITE_VARIANTS, package_file
from tlsearch.torchfile import TorchFileError, read_state_dict

LITE0 = LITE_VARIANTS["efficientnet_lite0"]


def _legacy(obj_pickle: bytes, keys: list, tail: bytes = b"") -> bytes:
    head = b"".join(pickle.dumps(v, protocol=2) for v in (
        0x1950A86A20F9469CFC6C, 1001, {"little_endian": True, "protocol_version": 1001}))
    return head + obj_pickle + pickle.dumps(keys, protocol=2) + tail


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def lite0_bytes() -> bytes:
    path = package_file(LITE0)
    if path is None:
        pytest.skip(f"{LITE0.distribution} is not installed")
    return path.read_bytes()


def test_reads_the_real_file(lite0_bytes, tmp_path):
    path = tmp_path / "lite0.pth"
    path.write_bytes(lite0_bytes)
    state = read_state_dict(path, LITE0.sha256)
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    trainable = sum(v.size for k, v in state.items()
                    if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert trainable == 4_652_008


def test_refuses_a_wrong_checksum(lite0_bytes, tmp_path):
    altered = bytearray(lite0_bytes)
    altered[len(altered) // 2] ^= 0xFF
    path = tmp_path / "altered.pth"
    path.write_bytes(bytes(altered))
    with pytest.raises(TorchFileError, match="is not the pinned"):
        read_state_dict(path, LITE0.sha256)


def test_refuses_a_truncated_storage(lite0_bytes, tmp_path):
    cut = lite0_bytes[:-100]
    path = tmp_path / "cut.pth"
    path.write_bytes(cut)
    with pytest.raises(TorchFileError, match="truncated"):
        read_state_dict(path, _sha(cut))  # even with a checksum that matches what is there


@pytest.mark.parametrize("hostile", [os.getcwd, OrderedDict, print], ids=str)
def test_refuses_any_other_global(tmp_path, hostile):
    # OrderedDict itself is allowed, but only inside the state_dict pickle: everywhere
    # else, and any other global anywhere, is refused before it is looked up.
    data = _legacy(pickle.dumps({"x": hostile}, protocol=2), [])
    if hostile is OrderedDict:
        data = pickle.dumps(hostile, protocol=2) + data
    path = tmp_path / "hostile.pth"
    path.write_bytes(data)
    with pytest.raises(TorchFileError, match="refused global|not a legacy"):
        read_state_dict(path, _sha(data))


def test_refuses_a_global_that_executes_on_load(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    data = _legacy(pickle.dumps(OrderedDict(w=Boom()), protocol=2), [])
    path = tmp_path / "boom.pth"
    path.write_bytes(data)
    with pytest.raises(TorchFileError, match="refused global"):
        read_state_dict(path, _sha(data))
    assert not (tmp_path / "pwned").exists()
