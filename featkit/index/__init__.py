"""Similar-image search over feature stores with FAISS: build, search, add, remove, and near-duplicate groups."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from featkit.index.index import Index

__all__ = ["Index"]


def __getattr__(name: str):
    # Index embeds query images (torch): loaded on first use, so reading or verifying an index's files doesn't pay
    # for importing torch.
    if name == "Index":
        from featkit.index.index import Index

        return Index
    raise AttributeError(f"module 'featkit.index' has no attribute {name!r}")
