"""featkit: features from named layers of pretrained CNNs, at the speed of the hardware, into a resumable store."""

from __future__ import annotations

__version__ = "0.1.0"

import importlib  # noqa: E402

from featkit.errors import FeatkitError  # noqa: E402

# Loaded on first use, so `import featkit` (and the CLI's --help) doesn't pay for importing torch.
_LAZY = {
    "extract": "featkit.api",
    "embed": "featkit.extraction.embed",
    "Embedder": "featkit.extraction.embed",
    "Embedding": "featkit.extraction.embed",
    "StoreSettings": "featkit.store.settings",
    "describe": "featkit.backbones.registry",
    "list_backbones": "featkit.backbones.registry",
    "ExtractConfig": "featkit.extraction.config",
    "FeatureStore": "featkit.store.reader",
    "Index": "featkit.index",
    "open_features": "featkit.store.reader",
    "predict": "featkit.extraction.predict",
    "verify": "featkit.api",
}

__all__ = ["Embedder", "Embedding", "ExtractConfig", "FeatkitError", "FeatureStore", "Index", "StoreSettings",
           "describe", "embed", "extract", "list_backbones", "open_features", "predict", "verify"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'featkit' has no attribute {name!r}")
