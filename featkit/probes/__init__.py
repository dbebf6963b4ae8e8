"""Probes of feature quality: a linear probe with the standard C-selection protocol, and a cosine kNN probe."""

from __future__ import annotations

from featkit.probes.knn import KNNProbe, run_knn_probe
from featkit.probes.linear import LinearProbe, ProbeError
from featkit.probes.protocol import (
           DEFAULT_GRID,
           ProbeResult,
           Selection,
           run_linear_probe,
           select_C,
)

__all__ = ["DEFAULT_GRID", "KNNProbe", "LinearProbe", "ProbeError", "ProbeResult", "Selection", "run_knn_probe",
           "run_linear_probe", "select_C"]
