"""Layer-by-layer facts of a backbone: output volume, memory, parameters, MACs, receptive field.

``inspect_backbone(InspectConfig("vgg16"))`` returns an :class:`Inspection`; :mod:`featkit.reports` formats it.
"""

from __future__ import annotations

from featkit.inspect.layers import DTYPE_BYTES, LayerRow, layer_rows
from featkit.inspect.receptive import Field
from featkit.inspect.summary import (
           DEPTHS,
           InspectConfig,
           Inspection,
           Totals,
           inspect_backbone,
           inspect_module,
)

__all__ = ["DEPTHS", "DTYPE_BYTES", "Field", "InspectConfig", "Inspection", "LayerRow", "Totals", "inspect_backbone",
           "inspect_module", "layer_rows"]
