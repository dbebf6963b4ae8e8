"""Where memory lives vs where parameters live: two bar charts of an inspection, saved as a PNG (headless)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from featkit._atomic import writing
from featkit.inspect import Inspection
from featkit.reports.tables import title

MAX_WIDTH_IN = 40  # ResNet-152 at layer depth still fits a screen when zoomed


def plot_layers(result: Inspection, path: str | Path) -> Path:
    """Activation memory (top) and parameters (bottom) per row, one bar each; rows with neither are left out."""
    rows = [r for r in result.rows if r.memory_bytes or r.params]
    labels = [r.taps[0] if r.taps else r.name for r in rows]
    x = list(range(len(rows)))
    fig = Figure(figsize=(min(MAX_WIDTH_IN, max(8.0, 0.28 * len(rows))), 7.5), layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot, no display: works on any headless machine
    memory_ax, params_ax = fig.subplots(2, 1, sharex=True)
    memory_ax.bar(x, [r.memory_bytes / 1e6 for r in rows], color="tab:blue")
    memory_ax.set_ylabel(f"activation memory (MB, {result.dtype})")
    params_ax.bar(x, [r.params / 1e6 for r in rows], color="tab:orange")
    params_ax.set_ylabel("parameters (millions)")
    params_ax.set_xticks(x, labels, rotation=90, fontsize=7 if len(rows) < 60 else 5)
    for ax in (memory_ax, params_ax):
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title(result), fontsize=10)
    path = Path(path)
    with writing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path
