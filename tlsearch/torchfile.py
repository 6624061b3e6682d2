"""Read a legacy (non-zip) PyTorch checkpoint with numpy, executing nothing.

A legacy file is five pickles and then raw storages: magic number, protocol, system
info, the object itself (storages as persistent ids), the list of storage keys, then
for each key an int64 element count and the little-endian bytes. The object pickle of
a state_dict names four globals; the unpickler maps exactly those to inert stand-ins
and refuses every other one, and the file's sha256 must match a pinned value before
any of it is parsed. No torch, no code from the file.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["TorchFileError", "read_state_dict"]

_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL = 1001


class TorchFileError(ValueError):
    """The file is not the pinned, well-formed legacy state_dict it should be."""


@dataclass(frozen=True)
class _StorageType:
    dtype: str  # numpy dtype, little-endian


@dataclass
class _Storage:
    key: str
    dtype: str
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


#: (module, name) -> stand-in: the only globals a state_dict pickle may name.
_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch", "FloatStorage"): _StorageType("<f4"),
    ("torch", "LongStorage"): _StorageType("<i8"),
}


class _Restricted(pickle.Unpickler):
    def __init__(self, fh, *, allow: bool) -> None:
        super().__init__(fh)
        self.allow = allow
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if self.allow and (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise TorchFileError(f"refused global {module}.{name}")

    def persistent_load(self, pid):
        if not self.allow:
            raise TorchFileError("unexpected persistent id")
        if (not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType)):
            raise TorchFileError(f"unsupported persistent id {str(pid)[:60]}")
        _, kind, key, _location, numel = pid[:5]
        if str(key) not in self.storages:
            self.storages[str(key)] = _Storage(str(key), kind.dtype, int(numel))
        return self.storages[str(key)]


def _load(fh, *, allow: bool = False, unpickler: _Restricted | None = None):
    try:
        return (unpickler or _Restricted(fh, allow=allow)).load()
    except TorchFileError:
        raise
    except Exception as exc:  # truncated or malformed pickle data
        raise TorchFileError(f"malformed pickle ({type(exc).__name__}: {exc})") from None


def read_state_dict(path: Path, sha256: str) -> dict[str, np.ndarray]:
    """The file's tensors by name, as numpy arrays.

    Raises:
        TorchFileError: the checksum differs, the file is truncated or malformed, or
            its pickle names a global outside the allowlist.
    """
    raw = Path(path).read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256:
        raise TorchFileError(f"sha256 {digest[:16]}... is not the pinned {sha256[:16]}...")
    fh = io.BytesIO(raw)
    if _load(fh) != _MAGIC or _load(fh) != _PROTOCOL:
        raise TorchFileError("not a legacy PyTorch file (magic number or protocol)")
    info = _load(fh)
    if not isinstance(info, dict) or not info.get("little_endian", True):
        raise TorchFileError("not a little-endian legacy PyTorch file")
    unpickler = _Restricted(fh, allow=True)
    obj = _load(fh, unpickler=unpickler)
    keys = _load(fh)
    if not isinstance(obj, dict) or not isinstance(keys, list):
        raise TorchFileError("the file does not hold a state_dict")
    for key in keys:
        storage = unpickler.storages.get(str(key))
        if storage is None:
            raise TorchFileError(f"storage {key!r} is listed but never used")
        count = np.frombuffer(fh.read(8), "<i8")
        itemsize = np.dtype(storage.dtype).itemsize
        body = fh.read(storage.numel * itemsize)
        whole = len(body) == storage.numel * itemsize
        if count.size != 1 or int(count[0]) != storage.numel or not whole:
            raise TorchFileError(f"storage {key!r} is truncated")
        storage.data = np.frombuffer(body, storage.dtype)
    tensors = {}
    for name, ref in obj.items():
        if not isinstance(ref, _TensorRef) or ref.storage.data is None:
            raise TorchFileError(f"entry {name!r} is not a tensor of this file")
        flat = ref.storage.data
        if len(ref.size) != len(ref.stride):
            raise TorchFileError(f"tensor {name!r} has a malformed shape")
        reach = sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
        needed = ref.offset + reach + 1
        if ref.size and min(ref.size) > 0 and needed > flat.size:
            raise TorchFileError(f"tensor {name!r} reaches past its storage")
        view = np.lib.stride_tricks.as_strided(
            flat[ref.offset:], shape=ref.size,
            strides=tuple(s * flat.itemsize for s in ref.stride), writeable=False)
        tensors[str(name)] = np.array(view)
    return tensors
