"""featkit: features from named layers of pretrained CNNs, at the speed of the hardware, into a resumable store."""

from __future__ import annotations

__version__ = "0.1.0"

from featkit.api import extract  # noqa: E402
from featkit.backbones.registry import describe, list_backbones  # noqa: E402
from featkit.errors import FeatkitError  # noqa: E402
from featkit.extract.config import ExtractConfig  # noqa: E402
from featkit.store.reader import FeatureStore, open_features  # noqa: E402

__all__ = ["ExtractConfig", "FeatkitError", "FeatureStore", "describe", "extract", "list_backbones", "open_features"]
