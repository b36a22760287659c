"""Read a PyTorch state dict (``torch.save(model.state_dict(), path)``) without PyTorch.

    from training.architectures.torch_state import read_state_dict
    tensors = read_state_dict("efficientnet-lite0.pth")   # {"_conv_stem.weight": ndarray, ...}

Both serializations of ``torch.save`` are read (PyTorch's ``torch/serialization.py`` is the
reference; https://pytorch.org/docs/stable/notes/serialization.html describes them):

- **zip** (the default since PyTorch 1.6): a zip archive whose ``<folder>/data.pkl`` is a pickle
  of the object, every tensor's storage written to ``<folder>/data/<key>`` as raw little-endian
  bytes; the pickle refers to a storage by a *persistent id*
  ``("storage", <torch.FloatStorage...>, key, location, numel)``.
- **legacy** (before 1.6, and with ``_use_new_zipfile_serialization=False``): five pickles in a
  row (the magic number 0x1950a86a20f9469cfc6c, the protocol version 1001, system information
  ``{"little_endian": ..., "type_sizes": ...}``, the object, the list of storage keys in the order
  they follow), then for each key an int64 element count and the storage's raw bytes. The object's
  persistent ids are ``("storage", <type>, key, location, numel, view_metadata)``.

In both, a tensor is pickled as a call ``torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, requires_grad, backward_hooks[, metadata])`` (``_rebuild_parameter`` wraps one for an
``nn.Parameter``), and a state dict is a ``collections.OrderedDict``. The unpickler here is
*restricted*: it resolves those few names (and the storage types) to its own functions, building
NumPy arrays, and refuses every other global, so a malicious file cannot run code while it is read
(what ``torch.load(weights_only=True)`` does too). Anything that is not a file of named tensors is
refused with one line (``TorchStateError``).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch's storage classes -> the NumPy dtype of their elements (little-endian).
STORAGE_DTYPES = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class TorchStateError(ValueError):
    """The file is not a readable PyTorch state dict (one line says why)."""


class _StorageType:
    """Stands for ``torch.<Name>Storage`` inside the pickle."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _dtype(STORAGE_DTYPES[name])


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":  # NumPy has no bfloat16: read the bits, widen to float32 in _Storage
        return np.dtype("<u2")
    return np.dtype(name)


class _Storage:
    """A storage's elements, filled in once its bytes are read (legacy: after the object)."""

    def __init__(self, storage_type: _StorageType, numel: int):
        self.type = storage_type
        self.numel = int(numel)
        self.array: np.ndarray | None = None

    def fill(self, raw: bytes) -> None:
        itemsize = self.type.dtype.itemsize
        if len(raw) < self.numel * itemsize:
            raise TorchStateError(
                f"a storage holds {len(raw)} bytes, {self.numel * itemsize} expected (truncated)"
            )
        array = np.frombuffer(raw, dtype=self.type.dtype, count=self.numel)
        if self.type.name == "BFloat16Storage":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        self.array = array


class _Tensor:
    """A tensor whose storage may not be read yet: materialised by ``_materialise``."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        if not isinstance(storage, _Storage):
            raise TorchStateError("a tensor without a storage")
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

    def array(self) -> np.ndarray:
        data = self.storage.array
        if data is None:
            raise TorchStateError("a tensor's storage is missing from the file")
        if not self.size:
            return data[self.offset : self.offset + 1].reshape(()).copy()
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if min(self.size) > 0 and (last >= data.size or self.offset < 0 or min(self.stride) < 0):
            raise TorchStateError(f"a tensor of shape {self.size} reaches past its storage")
        itemsize = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=[s * itemsize for s in self.stride], writeable=False
        )
        return np.array(view)  # a contiguous copy


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, hooks=None, state=None):
    return data


# The globals a state dict may name, and what stands for them here. Anything else is refused.
ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only ``ALLOWED`` globals; storages come from ``persistent_load``."""

    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise TorchStateError(
                f"refused: the pickle names {module}.{name}, which a state dict of tensors never does"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise TorchStateError(f"refused: unknown persistent id {str(pid)[:80]}")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if not isinstance(storage_type, _StorageType):
            raise TorchStateError(f"refused: storage of unknown type {storage_type!r}")
        if len(pid) > 5 and pid[5] is not None:
            raise TorchStateError("refused: storage views (PyTorch < 0.4 files) are not supported")
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type, numel)
        return self.storages[key]


def read_state_dict(path: str | Path) -> OrderedDict[str, np.ndarray]:
    """The named tensors of the PyTorch state dict at ``path`` as NumPy arrays, in file order.

    ``TorchStateError`` (one line) for a missing, truncated or foreign file, or a pickle that names
    anything but tensors (see the module docstring). bfloat16 tensors are widened to float32.
    """
    path = Path(path)
    if not path.is_file():
        raise TorchStateError(f"{path}: no such file")
    try:
        state = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    except TorchStateError as error:
        raise TorchStateError(f"{path} is not a PyTorch state dict: {error}") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        IndexError,
    ) as error:
        raise TorchStateError(
            f"{path} is not a PyTorch state dict (torch.save of model.state_dict()): "
            f"{type(error).__name__}: {str(error)[:200]}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a training checkpoint {"state_dict": ..., "epoch": ...}
    if not isinstance(state, dict) or not state:
        raise TorchStateError(f"{path} holds a {type(state).__name__}, not a state dict of named tensors")
    out = OrderedDict()
    for name, value in state.items():
        if not isinstance(value, _Tensor):
            raise TorchStateError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
        out[str(name)] = value.array()
    return out


def _read_legacy(path: Path):
    with path.open("rb") as file:
        if _Unpickler(file, {}).load() != LEGACY_MAGIC:
            raise TorchStateError("no PyTorch magic number (neither a zip nor a legacy torch.save file)")
        if _Unpickler(file, {}).load() != LEGACY_PROTOCOL:
            raise TorchStateError(f"unknown legacy protocol (expected {LEGACY_PROTOCOL})")
        info = _Unpickler(file, {}).load()
        if not isinstance(info, dict) or not info.get("little_endian", False):
            raise TorchStateError("big-endian files are not supported")
        storages: dict[str, _Storage] = {}
        state = _Unpickler(file, storages).load()
        keys = _Unpickler(file, {}).load()
        if not isinstance(keys, list) or set(map(str, keys)) != set(storages):
            raise TorchStateError("its storage list does not match the tensors")
        size = path.stat().st_size
        for key in keys:
            storage = storages[str(key)]
            count = int(np.frombuffer(_read_exactly(file, 8), "<i8")[0])
            if count != storage.numel or count < 0:
                raise TorchStateError(f"storage {key} has {count} elements, the tensors say {storage.numel}")
            nbytes = count * storage.type.dtype.itemsize
            if nbytes > size - file.tell():  # before allocating what a hostile header claims
                raise TorchStateError("truncated file")
            storage.fill(_read_exactly(file, nbytes))
    return state


def _read_exactly(file, size: int) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise TorchStateError("truncated file")
    return data


def _read_zip(path: Path):
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise TorchStateError("a zip without exactly one <folder>/data.pkl (not a torch.save file)")
        folder = pickles[0][: -len("data.pkl")]
        byteorder = f"{folder}byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise TorchStateError("big-endian files are not supported")
        storages: dict[str, _Storage] = {}
        state = _Unpickler(io.BytesIO(archive.read(pickles[0])), storages).load()
        for key, storage in storages.items():
            if storage.numel < 0:
                raise TorchStateError(f"storage {key} claims {storage.numel} elements")
            with archive.open(f"{folder}data/{key}") as member:  # no more than the tensors need
                storage.fill(member.read(storage.numel * storage.type.dtype.itemsize))
    return state
