"""Safe loading, checking and fetching of weights files.

Every ``torch.load`` here passes ``weights_only=True`` explicitly: with an explicit value torch ignores
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``, and there is no fall-back to full unpickling. Zip checkpoints get their
CRC-32s verified first because torch's reader does not check them (a flipped bit in tensor data would load).
Legacy (pre-1.6, non-zip) torch files carry no checksum at all and are refused unread, with how to re-save them;
safetensors files carry none either, so every loaded floating tensor is checked for NaN and inf, which is what a
flipped exponent bit makes.
"""

from __future__ import annotations

import functools
import http.client
import logging
import os
import pickle
import re
import zipfile
import zlib
from pathlib import Path
from urllib.parse import urlparse

import torch

from featkit import _files
from featkit.errors import WeightsError

logger = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "ema")
STRIP_PREFIXES = ("module.", "_orig_mod.")
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."  # pickled torch legacy MAGIC_NUMBER
_CHUNK = 1 << 20
_FINITE_CHUNK = 1 << 24  # elements summed at a time; counting a bad chunk's NaNs takes a 16 MB mask at most
_SHOW = 5


def sha256_file(path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks.

    Remembered per (file, inode, size, mtime): a run checks the cached ImageNet file's hash and then records it in
    the manifest, and reading a 528 MB VGG checkpoint twice for that is wasted start-up.
    """
    try:
        st = os.stat(path)
    except OSError:
        return _sha256_uncached(path)  # let _open_weights raise its one-line error
    return _sha256_of(os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(real_path: str, inode: int, size: int, mtime_ns: int) -> str:
    return _sha256_uncached(real_path)


def _sha256_uncached(path) -> str:
    with _open_weights(path):  # its one-line errors for a path that is missing, not a file or unreadable
        pass
    return _files.sha256_file(path)


def load_state_dict_file(path) -> dict[str, torch.Tensor]:
    """Load a ``.pth``/``.pt``/torch zip or ``.safetensors`` file as a plain ``{name: tensor}`` dict.

    Raises:
        WeightsError: the file is missing, corrupt, or not a plain state_dict (one line saying what to do).
    """
    path = Path(path)
    with _open_weights(path) as f:
        head = f.read(16)
        size = os.fstat(f.fileno()).st_size
    if size < 16:
        raise _corrupt(path, f"the file is only {size} bytes")
    if path.suffix.lower() == ".safetensors" or (head[8:9] == b"{" and not head.startswith(_ZIP_MAGIC)):
        obj = _load_safetensors(path, head)
    elif head.startswith(_ZIP_MAGIC):
        obj = _load_torch_zip(path)
    elif head.startswith(_LEGACY_MAGIC):
        raise _not_plain(path, "it is a legacy torch file from before torch 1.6, which carries no checksum to "
                         "detect damage", legacy=True)
    elif head.startswith(b"\x80"):  # pickle protocol 2+, without torch's header
        raise _not_plain(path, "it is a bare pickle, not a torch.save file")
    else:
        raise _not_plain(path, _describe_foreign(head))
    state_dict = _strip_prefixes(_unwrap(path, obj), path)
    _check_finite(path, state_dict)
    return state_dict


def load_torch_file(path) -> object:
    """Load a torch.save zip file as saved (e.g. a training checkpoint holding tensors and plain data).

    The same guarantees as :func:`load_state_dict_file`: CRC-32s verified, ``weights_only=True``, one-line errors.
    """
    path = Path(path)
    with _open_weights(path) as f:
        head = f.read(4)
    if not head.startswith(_ZIP_MAGIC):
        raise _corrupt(path, "it is not a torch.save zip file")
    return _load_torch_zip(path)


def check_state_dict(model: torch.nn.Module, state_dict, *, source: str, model_name: str | None = None) -> None:
    """Raise a one-line WeightsError unless ``state_dict`` has exactly the model's keys and shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = {k: list(getattr(state_dict[k], "shape", ())) for k in expected if k in state_dict}
    reshaped = [
        f"{k}: file {shape} vs model {list(expected[k].shape)}"
        for k, shape in shapes.items()
        if shape != list(expected[k].shape)
    ]
    if not (missing or unexpected or reshaped):
        return
    parts = [
        f"{len(items)} {label} ({_first(items)})"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("with another shape", reshaped))
        if items
    ]
    name = model_name or type(model).__name__
    raise WeightsError(
        f"Weights {source} do not fit {name}: {', '.join(parts)}. "
        f"Pass weights saved from this exact architecture (same number of classes), or --weights random."
    )


def hub_checkpoint_path(url: str) -> Path:
    """Return where torch.hub / torchvision cache the file of ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def fetch_checkpoint(url: str, *, download: bool = True, progress: bool = False) -> Path:
    """Return the cached file of ``url`` after checking its hash, downloading it first if allowed."""
    dst = hub_checkpoint_path(url)
    match = torch.hub.HASH_REGEX.search(dst.name)
    prefix = match.group(1) if match and match.group(1) else None
    if dst.is_file():
        if prefix is not None:
            actual = sha256_file(dst)
            if not actual.startswith(prefix):
                raise WeightsError(
                    f"Cached weights file {dst} is not the published file of {url}: its sha256 is {actual}, "
                    f"expected one starting with {prefix}. Delete {dst} and run again to download it anew, "
                    f"or copy the published file there."
                )
        return dst
    advice = "Connect to the internet once, copy the file there, or pass --weights random / --weights FILE."
    if not download:
        raise WeightsError(
            f"ImageNet weights for this model are not cached ({dst}) and downloading is turned off "
            f"(source: {url}). {advice}"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=prefix, progress=progress)
    except RuntimeError as e:
        if "invalid hash value" not in str(e):  # torch's check of the downloaded bytes against the URL's prefix
            raise
        raise WeightsError(
            f"Weights downloaded from {url} do not match their published hash ({_one_line(e)}); nothing was "
            f"saved to {dst}. Try again, copy a good file there, or pass --weights random / --weights FILE."
        ) from None
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError and socket errors are OSErrors
        raise WeightsError(
            f"ImageNet weights for this model are not cached ({dst}) and could not be downloaded from {url} "
            f"({_one_line(e)}). {advice}"
        ) from None
    return dst


def _open_weights(path):
    if (what := _files.not_a_file(path)) is not None:  # open() would wait forever on a FIFO
        raise WeightsError(f"weights path {path} is {what}, not a file; pass the weights file itself")
    try:
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {path}") from None
    except OSError as e:
        raise WeightsError(f"cannot read weights file {path} ({_one_line(e)}); check its permissions") from None


def _load_torch_zip(path: Path):
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            roots = {info.filename.split("/", 1)[-1] for info in infos}
            if "constants.pkl" in roots:
                raise _not_plain(path, "it is a TorchScript archive, which featkit never runs", torchscript=True)
            if "data.pkl" not in roots:
                raise _not_plain(path, "it is a zip archive but not a torch.save file")
            _verify_crc32(zf, infos)
    except zipfile.BadZipFile as e:
        raise _corrupt(path, _one_line(e)) from None
    except (EOFError, OSError, zlib.error, NotImplementedError, ValueError, RuntimeError) as e:
        raise _corrupt(path, f"unreadable zip: {_one_line(e)}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise _refused_pickle(path, e) from None
    except Exception as e:  # noqa: BLE001 - the CRCs held, so a pickle torch cannot read is damaged
        raise _corrupt(path, f"{type(e).__name__}: {_one_line(e)}") from None


def _verify_crc32(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> None:
    # torch.save(..., with set_crc32_options(False)) writes 0 for every CRC: nothing to verify then.
    if all(info.CRC == 0 for info in infos if info.file_size):
        logger.info("%s was saved without CRC-32 checksums; damage inside it cannot be detected", zf.filename)
        return
    for info in infos:
        with zf.open(info) as member:  # ZipExtFile raises BadZipFile on a CRC mismatch at EOF
            while member.read(_CHUNK):
                pass


def _load_safetensors(path: Path, head: bytes):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if head[8:9] != b"{":
        raise _not_plain(path, "it is named .safetensors but is not a safetensors file")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise _corrupt(path, f"safetensors: {_one_line(e)}") from None


def _unwrap(path: Path, obj) -> dict:
    why = _why_not_plain(obj)
    if why is None:
        return obj
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if key in obj and _why_not_plain(obj[key]) is None:
                logger.info("Using the '%s' entry of training checkpoint %s", key, path)
                return obj[key]
    raise _not_plain(path, why)


def _why_not_plain(obj) -> str | None:
    if not isinstance(obj, dict):
        return f"it holds a {type(obj).__name__}, not a dict of tensors"
    if not obj:
        return "it holds no tensors"
    for key, value in obj.items():
        if not isinstance(key, str):
            return f"it has a key of type {type(key).__name__}"
        if not isinstance(value, torch.Tensor):
            return f"its entry '{key}' is a {type(value).__name__}, not a tensor"
    return None


def _check_finite(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Refuse NaN and inf in floating tensors: no trained weights hold them, a flipped exponent bit does.

    A sum per chunk of each tensor (a NaN or inf makes it NaN or inf), so no copy or mask of a whole tensor; about
    0.03 s for VGG-16's 528 MB once in the page cache. A memory-mapped file's pages are all read once more (the
    CRC-32 check has just read them, so they are usually still cached).
    """
    bad = {}
    for key, tensor in state_dict.items():
        if not (tensor.is_floating_point() or tensor.is_complex()) or not tensor.numel():
            continue
        if tensor.layout != torch.strided:  # a sparse tensor: its stored values
            tensor = tensor.coalesce().values() if tensor.layout == torch.sparse_coo else tensor.values()
        flat = tensor.view(-1) if tensor.is_contiguous() else None  # a view, never a copy
        chunks = [tensor] if flat is None else [flat[i : i + _FINITE_CHUNK] for i in range(0, len(flat), _FINITE_CHUNK)]
        if count := sum(_non_finite(chunk) for chunk in chunks):
            bad[key] = count
    if bad:
        where = _first([f"{key} ({n})" if len(bad) > 1 else key for key, n in bad.items()])
        total = sum(bad.values())
        raise _corrupt(path, f"{total} non-finite value{'s' if total > 1 else ''} (NaN or inf) in {where}; damaged, "
                             f"or saved by a training that diverged")


def _non_finite(chunk: torch.Tensor) -> int:
    if chunk.element_size() == 1:  # float8: isfinite and sum are not implemented for all of them; float16 holds them
        chunk = chunk.to(torch.float16)
    total = chunk.sum() if chunk.element_size() >= 4 else chunk.sum(dtype=torch.float32)  # half: no overflow
    if torch.isfinite(total):  # one NaN or inf makes the sum NaN or inf
        return 0
    finite = torch.isfinite(chunk)  # or finite values overflowed the sum: count exactly
    return int(finite.numel() - finite.sum())


def _strip_prefixes(state_dict: dict, path: Path) -> dict[str, torch.Tensor]:
    stripped = ""
    while prefix := next((p for p in STRIP_PREFIXES if all(k.startswith(p) for k in state_dict)), None):
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
        stripped += prefix
    if stripped:
        logger.info("Stripped the '%s' prefix from the %d keys of %s", stripped, len(state_dict), path)
    return dict(state_dict)


def _refused_pickle(path: Path, error: Exception) -> WeightsError:
    text = str(error)
    if m := re.search(r"GLOBAL (\w[\w.]*)", text):
        reason = f"global {m.group(1)}"
    elif m := re.search(r"Unsupported operand (\d+)", text):
        reason = f"pickle opcode {m.group(1)}"
    else:
        tail = text.split("WeightsUnpickler error:", 1)[-1]
        reason = _one_line(tail)[:120] or "unsupported pickle content"
    return WeightsError(
        f"Weights file {path} is not a plain state_dict checkpoint (it asks to run code or build objects: "
        f"{reason}); featkit loads weights with weights_only=True only. If you trust its source, re-save just "
        f"the tensors (torch.save(model.state_dict(), ...) or safetensors) and pass that file."
    )


def _not_plain(path: Path, why: str, *, torchscript: bool = False, legacy: bool = False) -> WeightsError:
    if torchscript:
        todo = "load it with torch.jit.load where you trust it and save model.state_dict()"
    elif legacy:
        todo = ("re-save it in a current torch, torch.save(torch.load(path, weights_only=True), new_path), and "
                "pass the new file")
    else:
        todo = "pass a file saved with torch.save(model.state_dict(), ...) or a .safetensors file"
    return WeightsError(f"Weights file {path} is not a plain state_dict checkpoint ({why}); {todo}.")


def _corrupt(path: Path, why: str) -> WeightsError:
    return WeightsError(f"Weights file {path} is a corrupt checkpoint ({why}); download or copy it again.")


def _describe_foreign(head: bytes) -> str:
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head")):
        return "it is an HTML page, perhaps a failed download"
    return f"it starts with bytes {head[:8]!r}, which is neither a torch.save nor a safetensors file"


def _first(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return f"{shown} and {len(items) - _SHOW} more" if len(items) > _SHOW else shown


def _one_line(error) -> str:
    return " ".join(str(error).split())
