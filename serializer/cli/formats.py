"""The formats `convert`, `send` and `recv` read and write, and how each is told apart.

- ``srlz``: this library's stream (``.srlz``): `serializer.load` / `serializer.save`;
- ``pt``: a `torch.save` file (``.pt``, ``.pth``, ``.bin``): `torch.load` with
  ``weights_only=True`` / `torch.save`;
- ``torch-stream``: a stream of torch's `_streaming_save` (torch >= 2.7): `serializer.load` /
  `torch.distributed._serialization._streaming_save`;
- ``safetensors``: a safetensors file (``.safetensors``): `safetensors.torch` (an optional
  dependency);
- ``dcp``: a `torch.distributed.checkpoint` directory: `FileSystemReader` (in this process,
  no process group, as torch's `dcp_to_torch_save`) / `FileSystemWriter` (``no_dist``).
  Torch's reader unpickles the checkpoint's metadata with `pickle`: read only checkpoints
  you trust.

Every reader loads to CPU and every writer writes what it is given bit for bit; a target
that cannot hold the content raises `CliError` naming the key. Files are written to a
temporary name beside the destination and renamed into place when complete, so a failed
conversion leaves no partial file.

Torch streams are read with `serializer.load`, which hands them to the installed torch's own
reader but checks the skeleton under the library's weights_only rules and turns a cut or
malformed stream into the library's errors.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys
import warnings
from collections.abc import Iterator, Mapping
from inspect import signature
from typing import Any, BinaryIO, cast

import torch

import serializer

from . import progress
from .errors import CliError

FORMATS = ("srlz", "pt", "torch-stream", "safetensors", "dcp")
EXTENSIONS = {
    ".srlz": "srlz",
    ".pt": "pt",
    ".pth": "pt",
    ".bin": "pt",
    ".safetensors": "safetensors",
    ".dcp": "dcp",
}
# The stream's magic (docs/FORMAT.md, "Preamble").
SRLZ_MAGIC = b"\x89SRLZ\r\n\x1a"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
# torch.save's legacy format: a pickle (protocol 2) of its magic number 0x1950a86a20f9469cfc6c.
LEGACY_PT_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
PICKLE_PROTO = 0x80  # how a torch _streaming_save stream begins

PORTABLE = "convert to .srlz, .pt or a DCP directory instead"


def sniff(path: str) -> str | None:
    """The format of `path` from its content, or None if its bytes do not tell."""
    if os.path.isdir(path):
        return "dcp"
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    if head.startswith(SRLZ_MAGIC):
        return "srlz"
    if head.startswith(ZIP_MAGIC) or head == LEGACY_PT_MAGIC[:9]:
        return "pt"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return "safetensors"  # an 8-byte little-endian header length, then a JSON header
    if head[:1] == bytes([PICKLE_PROTO]) and len(head) > 1 and head[1] >= 2:
        return "torch-stream"  # (after safetensors, whose length may begin 80 02)
    return None


def by_name(path: str) -> str | None:
    """The format `path`'s name implies: its extension, or a directory's trailing slash."""
    if path.endswith(("/", os.sep)):
        return "dcp"
    return EXTENSIONS.get(os.path.splitext(path)[1].lower())


def source_format(path: str, given: str | None) -> str:
    """`given`, else what the content of `path` shows, else what its name implies."""
    if given:
        return given
    if not os.path.exists(path):
        raise CliError(f"{path}: no such file or directory", 1)
    found = sniff(path) or by_name(path)
    if found is None:
        raise CliError(
            f"{path}: cannot tell its format; name it with --from {{{','.join(FORMATS)}}}"
        )
    return found


def target_format(path: str, given: str | None) -> str:
    """`given`, else what the name of `path` implies (an existing directory is DCP)."""
    if given:
        return given
    found = "dcp" if os.path.isdir(path) else by_name(path)
    if found is None:
        raise CliError(
            f"{path}: cannot tell the format from the name (use .srlz, .pt, .pth, .safetensors, "
            f"or a trailing / for a DCP directory); name it with --to {{{','.join(FORMATS)}}}"
        )
    return found


# ---------------------------------------------------------------------------- walking objects


def tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in `obj` (nested dicts, lists and tuples), with its dotted key."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors(v, f"{prefix}.{i}" if prefix else str(i))


def _storage_key(t: torch.Tensor) -> tuple[str, int] | None:
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # no storage (a tensor subclass)
        return None
    if storage.nbytes() == 0:
        return None
    return (str(storage.device), storage.data_ptr())


def shared(obj: Any) -> list[list[str]]:
    """Groups of keys whose tensors share one storage (views of one another)."""
    groups: dict[tuple[str, int], list[str]] = {}
    for key, t in tensors(obj):
        storage = _storage_key(t)
        if storage is not None:
            groups.setdefault(storage, []).append(key)
    return [keys for keys in groups.values() if len(keys) > 1]


def payload_bytes(obj: Any) -> int:
    """Bytes of the storages of `obj`'s tensors, each storage once (a progress total)."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for _, t in tensors(obj):
        storage = _storage_key(t)
        if storage is not None and storage not in seen:
            seen.add(storage)
            total += t.untyped_storage().nbytes()
    return total


def _keys(keys: list[str]) -> str:
    return ", ".join(repr(k) for k in keys)


# ---------------------------------------------------------------------------- reading


def read(fmt: str, path: str, *, quiet: bool = False) -> Any:
    """The object `path` holds in format `fmt`, on CPU."""
    if fmt in ("srlz", "torch-stream"):
        return _read_stream(fmt, path, quiet)
    if fmt == "pt":
        return _read_pt(path, quiet)
    if fmt == "safetensors":
        return _read_safetensors(path, quiet)
    if fmt == "dcp":
        return _read_dcp(path, quiet)
    raise CliError(f"unknown format {fmt!r}")


def _read_stream(fmt: str, path: str, quiet: bool) -> Any:
    with open(path, "rb") as f:
        head = f.read(len(SRLZ_MAGIC))
        f.seek(0)
        if fmt == "srlz" and not head.startswith(SRLZ_MAGIC):
            raise CliError(f"{path}: not a serializer stream (it does not begin with its magic)")
        if fmt == "torch-stream" and head[:1] != bytes([PICKLE_PROTO]):
            raise CliError(f"{path}: not a torch _streaming_save stream (not a pickle)")
        size = os.fstat(f.fileno()).st_size
        with progress.make(f"read {path}", size, quiet=quiet) as bar, warnings.catch_warnings():
            # torch's stream reader makes its storages over the bytes it read (read-only)
            warnings.filterwarnings("ignore", "The given buffer is not writable")
            if fmt == "srlz":
                obj = serializer.load(f, map_location="cpu", progress=bar.hook)
            else:  # torch's format: no length known before the end, so counted at the file
                obj = serializer.load(progress.Reader(f, bar), map_location="cpu")
        if f.read(1):
            raise CliError(
                f"{path}: more bytes follow the first stream (a file of several streams: "
                "convert takes one)"
            )
    return obj


def _read_pt(path: str, quiet: bool) -> Any:
    with open(path, "rb") as f:
        with progress.make(f"read {path}", os.fstat(f.fileno()).st_size, quiet=quiet) as bar:
            try:
                reader = cast(BinaryIO, progress.Reader(f, bar, seekable=True))
                return torch.load(reader, map_location="cpu", weights_only=True)
            except OSError:
                raise
            except Exception as e:  # torch's reader: UnpicklingError, RuntimeError, ...
                raise CliError(f"{path}: torch.load (weights_only=True) failed: {e}") from e


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise CliError(
            "safetensors is not installed: pip install safetensors (or serializer[cli])"
        ) from None
    return safetensors.torch


def _read_safetensors(path: str, quiet: bool) -> Any:
    _safetensors()
    from safetensors import safe_open

    try:
        with progress.make(f"read {path}", os.path.getsize(path), quiet=quiet) as bar:
            out = {}
            with safe_open(path, framework="pt", device="cpu") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    t = f.get_tensor(key)
                    out[key] = t
                    bar.update(t.numel() * t.element_size())
            bar.update(max(0, (bar.total or 0) - bar.done))  # the header
    except OSError:
        raise
    except Exception as e:  # SafetensorError, ValueError from the header
        raise CliError(f"{path}: not a readable safetensors file: {e}") from e
    return out


def _read_dcp(path: str, quiet: bool) -> Any:
    if not os.path.isdir(path):
        raise CliError(f"{path}: a DCP checkpoint is a directory")
    try:
        fs: Any = importlib.import_module("torch.distributed.checkpoint.filesystem")
        utils: Any = importlib.import_module("torch.distributed.checkpoint.format_utils")
        load_state_dict, planner = utils._load_state_dict, utils._EmptyStateDictLoadPlanner
    except (ImportError, AttributeError) as e:
        raise CliError(f"this torch ({torch.__version__}) cannot read DCP checkpoints: {e}") from e
    total = sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
    state: dict[str, Any] = {}
    with progress.make(f"read {path}", total, quiet=quiet) as bar, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # What torch's own dcp_to_torch_save does: rebuild the state dict from the
            # checkpoint's metadata, in this process, with no process group.
            load_state_dict(
                state, storage_reader=fs.FileSystemReader(path), planner=planner(), no_dist=True
            )
        except OSError:
            raise
        except Exception as e:
            raise CliError(f"{path}: not a readable DCP checkpoint: {e}") from e
        bar.update(total)
    return state


# ---------------------------------------------------------------------------- writing


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """A temporary path beside `path`, renamed to `path` if the block succeeds and removed
    if it fails."""
    path = os.path.abspath(path)  # no trailing separator
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        yield tmp
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if os.path.isdir(tmp):
        if os.path.isdir(path):
            os.rmdir(path)  # empty: checked before writing
        os.rename(tmp, path)
    else:
        os.replace(tmp, path)


def check(fmt: str, obj: Any, path: str) -> None:
    """Raise `CliError` if format `fmt` cannot hold `obj` (before anything is written)."""
    if fmt == "safetensors":
        _safetensors_tensors(obj)
    elif fmt == "dcp":
        _check_dcp(obj, path)
    elif fmt == "torch-stream":
        _streaming_save()


def write(fmt: str, obj: Any, path: str, *, quiet: bool = False) -> None:
    """Write `obj` to `path` in format `fmt`."""
    check(fmt, obj, path)
    total = payload_bytes(obj)
    with progress.make(f"write {path}", total, quiet=quiet) as bar, replacing(path) as tmp:
        try:
            _write(fmt, obj, tmp, bar, total)
        except serializer.SerializerError as e:  # UnsupportedError: what the format cannot hold
            odd = [k for k, t in tensors(obj) if _unusual(t)]
            where = f" (key {_keys(odd[:3])}{' ...' if len(odd) > 3 else ''})" if odd else ""
            raise CliError(f"{path}: {e}{where}") from e


def _unusual(t: torch.Tensor) -> bool:
    """A tensor that is not a dense strided one (what `save` may refuse, as the key to name)."""
    return t.layout != torch.strided or t.is_quantized or t.is_meta or t.is_nested


def _write(fmt: str, obj: Any, tmp: str, bar: progress.Progress, total: int) -> None:
    """Write `obj` in format `fmt` to `tmp`, counting into `bar`."""
    if fmt == "srlz":
        with open(tmp, "wb") as f:
            serializer.save(obj, f, progress=bar.hook)
    elif fmt == "pt":
        with open(tmp, "wb") as f:
            torch.save(obj, cast(BinaryIO, progress.Writer(f, bar)))
    elif fmt == "torch-stream":
        with open(tmp, "wb") as f:
            _streaming_save()(obj, progress.Writer(f, bar))
    elif fmt == "safetensors":
        _safetensors().save_file(_safetensors_tensors(obj), tmp)
        bar.update(total)
    elif fmt == "dcp":
        _write_dcp(obj, tmp)
        bar.update(total)
    else:
        raise CliError(f"unknown format {fmt!r}")


def _streaming_save() -> Any:
    try:
        from torch.distributed._serialization import _streaming_save
    except ImportError:
        raise CliError(
            f"torch streams need torch >= 2.7 (torch.distributed._serialization); this is "
            f"torch {torch.__version__}"
        ) from None
    return _streaming_save


def _safetensors_dtypes() -> set[torch.dtype]:
    st = _safetensors()
    known = getattr(st, "_TYPES", None)
    if isinstance(known, Mapping):
        return set(known.values())
    return {
        torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
        torch.int16, torch.int8, torch.uint8, torch.bool,
    }  # fmt: skip


def _safetensors_tensors(obj: Any) -> dict[str, torch.Tensor]:
    """`obj` as safetensors holds it: a flat dict of dense CPU tensors, each stored once."""
    if not isinstance(obj, Mapping):
        raise CliError(
            f"safetensors holds a flat dict of tensors; the source holds a "
            f"{type(obj).__qualname__} ({PORTABLE})"
        )
    dtypes = _safetensors_dtypes()
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CliError(f"key {key!r}: safetensors keys are strings ({PORTABLE})")
        if not isinstance(value, torch.Tensor):
            nested = " (a nested container)" if isinstance(value, (Mapping, list, tuple)) else ""
            raise CliError(
                f"key {key!r} holds a {type(value).__qualname__}{nested}, not a tensor: "
                f"safetensors holds only tensors ({PORTABLE})"
            )
        if type(value) not in (torch.Tensor, torch.nn.Parameter):
            raise CliError(f"key {key!r}: a {type(value).__qualname__} ({PORTABLE})")
        if value.layout != torch.strided:
            raise CliError(f"key {key!r}: a {value.layout} tensor ({PORTABLE})")
        if value.dtype not in dtypes:
            raise CliError(
                f"key {key!r}: dtype {str(value.dtype).removeprefix('torch.')} is not one "
                f"safetensors holds ({PORTABLE})"
            )
        out[key] = value.detach().to("cpu").contiguous()
    for keys in shared(obj):
        raise CliError(
            f"keys {_keys(keys)} share one storage (views of one tensor): safetensors stores "
            f"each tensor separately and refuses shared storages ({PORTABLE})"
        )
    return out


def _check_dcp(obj: Any, path: str) -> None:
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        what = type(obj).__qualname__ if not isinstance(obj, Mapping) else "dict with other keys"
        raise CliError(f"a DCP checkpoint holds a dict with string keys; the source holds a {what}")
    if os.path.isdir(path) and os.listdir(path):
        raise CliError(f"{path}: exists and is not empty (a DCP checkpoint is a new directory)")
    if os.path.exists(path) and not os.path.isdir(path):
        raise CliError(f"{path}: exists and is not a directory")
    for keys in shared(obj):
        sys.stderr.write(
            f"note: keys {_keys(keys)} share one storage; DCP stores each tensor separately, "
            "so they will not share one when loaded\n"
        )


def _write_dcp(obj: Any, path: str) -> None:
    try:
        dcp: Any = importlib.import_module("torch.distributed.checkpoint")
    except ImportError as e:
        raise CliError(f"this torch ({torch.__version__}) cannot write DCP checkpoints: {e}") from e
    writer = dcp.FileSystemWriter(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... single process"
        if "no_dist" in signature(dcp.save).parameters:
            dcp.save(dict(obj), storage_writer=writer, no_dist=True)
        else:  # older torch: without a process group, save assumes no_dist
            dcp.save(dict(obj), storage_writer=writer)
