"""Similar-image search over feature stores with FAISS: build, search, add, remove, and near-duplicate groups."""

from featkit.index.index import Index

__all__ = ["Index"]
