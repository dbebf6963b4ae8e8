"""Training checkpoints: only tensors and plain data (loadable with ``weights_only=True``), written atomically.

A checkpoint is serialised in memory, then written to a temp file, fsynced and renamed over the old one, so a
kill at any moment leaves the previous checkpoint whole. Loading goes through
:func:`featkit.backbones.checkpoints.load_torch_file` (CRC-32s checked, ``weights_only=True``).
"""

from __future__ import annotations

import io
import os
import signal
from collections import Counter
from pathlib import Path

import torch

from featkit._atomic import temp_path, write_bytes
from featkit.backbones.checkpoints import load_torch_file
from featkit.errors import FeatkitError

FORMAT = "featkit-finetune-checkpoint"
VERSION = 1
# Test hook: "step:N" kills this process with SIGKILL before its N-th training step, "save:N" in the middle of
# writing its N-th checkpoint (half the bytes in the temp file, nothing renamed) — the states a kill -9 leaves.
KILL_ENV = "FEATKIT_FINETUNE_KILL_AT"
_seen: Counter = Counter()


def kill_point(name: str) -> bool:
    """Count a pass through point ``name``; True when the hook asks to die here."""
    _seen[name] += 1
    return os.environ.get(KILL_ENV) == f"{name}:{_seen[name]}"


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buf)
    data = buf.getvalue()
    if kill_point("save"):
        temp_path(path).write_bytes(data[: len(data) // 2])
        die()
    write_bytes(path, data)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; anything else is a one-line error."""
    state = load_torch_file(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FeatkitError(f"{path} is not a featkit fine-tuning checkpoint.")
    if state.get("version") != VERSION:
        raise FeatkitError(f"{path} is a fine-tuning checkpoint of version {state.get('version')}; "
                           f"this featkit reads version {VERSION}.")
    return state

