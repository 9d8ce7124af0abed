"""Reading PyTorch checkpoint files without torch: tensors come back as numpy arrays.

Formats:
  - `torch.save`'s zip format (`.pt`, `.pth`, `.bin`, `.ckpt` since torch 1.6): an archive with
    `<name>/data.pkl` (the pickled object; each tensor's storage is a persistent id
    ('storage', storage type, key, location, numel)) and the raw storages `<name>/data/<key>`;
  - the legacy format of `torch.save(..., _use_new_zipfile_serialization=False)` and torch
    < 1.6: consecutive pickles (magic number, protocol version, system info, the object, the
    list of storage keys), then each storage as an int64 element count and its raw bytes;
  - plain pickles that hold tensors (`pickle.dump` of modules, as EDM's snapshots are): each
    storage is `torch.storage._load_from_bytes` of a legacy-format file;
  - `.safetensors`, through the `safetensors` package's numpy API.

Unpickling runs no code from the file: `find_class` resolves only the names a state dict
needs (ordered dicts, the tensor and parameter rebuild functions, storage and dtype names,
numpy scalars) to functions of this module, and raises `pickle.UnpicklingError` for any other
global. Callers that unpickle more (EDM's persistent classes) pass stand-ins for the extra
names in `classes`. Tensors are rebuilt from their storage with the pickled offset, size and
strides; float16, bfloat16 (`ml_dtypes`), float64 and the integer and bool types are kept.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import sys
import zipfile
from typing import Any, Callable, Mapping

import ml_dtypes
import numpy as np

from diffusion_jax.errors import ConfigError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "UntypedStorage": np.uint8,
}
TORCH_DTYPES = {
    "float64": np.float64, "double": np.float64, "float32": np.float32, "float": np.float32,
    "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64, "long": np.int64, "int32": np.int32, "int": np.int32,
    "int16": np.int16, "short": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}


class StorageType:
    """What `torch.FloatStorage` and friends unpickle to: the element dtype of a storage."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


class TorchDtype:
    """What `torch.float32` and friends unpickle to."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


class _Marker:
    """`torch.Tensor` / `torch.nn.Parameter` as the type argument of `_rebuild_from_type_v2`."""


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
    """A tensor of `size` and `stride` (in elements) viewing `storage` (a flat array) from
    `storage_offset`, copied into its own contiguous array."""
    if storage is None:  # the first pass over a legacy file, before its storages are read
        return None
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if any(s == 0 for s in size):
        return np.zeros(size, storage.dtype)
    extent = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if extent > storage.size:
        raise pickle.UnpicklingError(f"a tensor of size {size} and stride {stride} at offset "
                                     f"{storage_offset} overruns its storage of {storage.size}")
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=size,
        strides=tuple(s * storage.itemsize for s in stride))
    return np.array(view)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, hooks, dtype,
                       metadata=None):
    """Like `_rebuild_tensor` on an untyped (byte) storage read as `dtype`."""
    if storage is not None:
        storage = storage.view(dtype.dtype)
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    return func(*args)


def _numpy_scalar(dtype, data=None):
    if dtype.hasobject:
        raise pickle.UnpicklingError("object numpy scalars are not allowed in a checkpoint")
    return np.frombuffer(data, dtype)[0]


def _numpy_dtype(name, align=False, copy=True):
    dtype = np.dtype(name)
    if dtype.hasobject:
        raise pickle.UnpicklingError("object numpy dtypes are not allowed in a checkpoint")
    return dtype


def _allowed_globals() -> dict[tuple[str, str], Any]:
    names = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "Tensor"): _Marker,
        ("torch.nn.parameter", "Parameter"): _Marker,
        ("numpy", "dtype"): _numpy_dtype,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    }
    names.update({("torch", name): StorageType(d) for name, d in STORAGE_DTYPES.items()})
    names.update({("torch", name): TorchDtype(d) for name, d in TORCH_DTYPES.items()})
    return names


ALLOWED_GLOBALS = _allowed_globals()


class _Unpickler(pickle.Unpickler):
    """A pickle reader that resolves only `ALLOWED_GLOBALS` (and `classes`) and hands each
    tensor storage to `load_storage(key, dtype, numel)`."""

    def __init__(self, file, load_storage: Callable, classes: Mapping | None = None):
        super().__init__(file)
        self.load_storage = load_storage
        self.classes = {**ALLOWED_GLOBALS,
                        ("torch.storage", "_load_from_bytes"): self._load_from_bytes,
                        **(classes or {})}

    def find_class(self, module, name):
        try:
            return self.classes[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint (it "
                                         "is not part of a state dict)") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        storage_type, key, _, numel = pid[1:5]
        if not isinstance(storage_type, StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r:.80}")
        return self.load_storage(str(key), storage_type.dtype, int(numel))

    def _load_from_bytes(self, data: bytes):
        return _load_legacy(data, self.classes)


def _load_zip(path, classes=None):
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise ConfigError(f"{path!r} is a zip file but not a torch.save archive "
                              "(no single data.pkl)")
        prefix = pickles[0][:-len("data.pkl")]
        byteorder = (archive.read(prefix + "byteorder").decode().strip()
                     if prefix + "byteorder" in archive.namelist() else "little")

        def load_storage(key, dtype, numel):
            storage = np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype)[:numel]
            return storage if byteorder == sys.byteorder else storage.byteswap()

        with archive.open(pickles[0]) as f:
            return _Unpickler(io.BytesIO(f.read()), load_storage, classes).load()


def _load_legacy(data: bytes, classes=None):
    """The legacy `torch.save` format, from its bytes. The object is unpickled twice: once to
    find where the storages start (tensors left as None), then with the storages read."""
    f = io.BytesIO(data)
    header = _Unpickler(f, lambda *a: None, classes)
    if header.load() != LEGACY_MAGIC:
        raise ConfigError("not a torch.save file (wrong magic number)")
    if header.load() != LEGACY_PROTOCOL:
        raise ConfigError("unsupported torch.save legacy protocol version")
    sys_info = header.load()
    if not sys_info.get("little_endian", True):
        raise ConfigError("big-endian torch.save legacy files are not supported")
    start = f.tell()
    dtypes = {}

    def record(key, dtype, numel):
        dtypes[key] = dtype
        return None

    _Unpickler(f, record, classes).load()
    keys = _Unpickler(f, lambda *a: None, classes).load()
    storages, position = {}, f.tell()
    for key in keys:
        numel = int(np.frombuffer(data, np.int64, 1, position)[0])
        dtype = dtypes[str(key)]
        storages[str(key)] = np.frombuffer(data, dtype, numel, position + 8)
        position += 8 + numel * dtype.itemsize
    f.seek(start)
    return _Unpickler(f, lambda key, dtype, numel: storages[key], classes).load()


def load_torch_file(path, classes: Mapping | None = None):
    """The object saved by `torch.save` at `path` (zip or legacy format), tensors as numpy
    arrays. `classes` maps extra (module, name) globals to stand-ins."""
    if zipfile.is_zipfile(path):
        return _load_zip(path, classes)
    with open(path, "rb") as f:
        return _load_legacy(f.read(), classes)


def load_pickle(path, classes: Mapping | None = None):
    """A plain pickle (`pickle.dump`) holding tensors, e.g. an EDM snapshot, read with the
    restricted unpickler; `classes` maps the extra (module, name) globals it needs."""
    with open(path, "rb") as f:
        return _Unpickler(f, lambda *a: _fail_storage(), classes).load()


def _fail_storage():
    raise pickle.UnpicklingError("a plain pickle has no torch.save storages")


def load_safetensors(path) -> dict[str, np.ndarray]:
    """{name: array} of a `.safetensors` file, by the `safetensors` package's numpy API; a
    file with bfloat16 tensors, which that API cannot represent, is read from its layout
    (8-byte header length, JSON header of dtype, shape and data offsets, then the data) with
    bfloat16 as `ml_dtypes.bfloat16`."""
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except (KeyError, TypeError, ValueError):
        return _load_safetensors_bf16(path)


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32,
                       "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _load_safetensors_bf16(path) -> dict[str, np.ndarray]:
    import json

    with open(path, "rb") as f:
        data = f.read()
    length = int(np.frombuffer(data, "<u8", 1)[0])
    header = json.loads(data[8:8 + length])
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ConfigError(f"{path!r}: unsupported safetensors dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        raw = data[8 + length + begin:8 + length + end]
        tensors[name] = np.frombuffer(raw, _SAFETENSORS_DTYPES[info["dtype"]]).reshape(
            info["shape"]).copy()
    return tensors


def save_safetensors(path, tensors: Mapping[str, np.ndarray], metadata: dict | None = None) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata=metadata)


def load_state_dict(path) -> dict[str, np.ndarray]:
    """The tensors of a checkpoint file as {name: array}: `.safetensors`, or a `torch.save`
    file of a state dict, or of a dict holding one under "state_dict" (Lightning `.ckpt`)."""
    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint file {path!r} does not exist")
    if str(path).endswith(".safetensors"):
        return load_safetensors(path)
    obj = load_torch_file(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{path!r} does not hold a state dict (a mapping of tensors)")
    return {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
