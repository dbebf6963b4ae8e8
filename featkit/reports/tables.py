"""An :class:`~featkit.inspect.Inspection` as a terminal table (rich), CSV, Markdown or JSON. Formatting only."""

from __future__ import annotations

import csv
import io
import json

from rich.table import Table

from featkit.choices import TableFormat, values
from featkit.inspect import Inspection, LayerRow

FORMATS = values(TableFormat)
# Terminal and Markdown columns; the numeric ones are right-aligned.
HEADERS = ("layer", "tap", "kind", "output", "activations", "memory", "weights", "biases", "params", "MACs", "RF",
           "stride")
NUMERIC = {"activations", "memory", "weights", "biases", "params", "MACs", "RF", "stride"}


def volume(shape: tuple[int, ...]) -> str:
    """Output volume as the courses write it: H×W×C for maps."""
    if len(shape) == 3:
        c, h, w = shape
        return f"{h}×{w}×{c}"
    return "×".join(map(str, shape))


def _pair(values: tuple[int, int] | None) -> str:
    if values is None:
        return ""
    return str(values[0]) if values[0] == values[1] else f"{values[0]}×{values[1]}"


def _rf(row: LayerRow) -> tuple[int, int] | None:
    return row.field.size if row.field is not None else None


def _stride(row: LayerRow) -> tuple[int, int] | None:
    """The jump between neighbouring units; vectors and 1×1 maps have no neighbours."""
    is_map = len(row.shape) == 3 and row.shape[1] * row.shape[2] > 1
    return row.field.jump if row.field is not None and is_map else None


def size_text(num_bytes: float) -> str:
    """Decimal units, as the classic tables use (61 MB, not 58.1 MiB)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes:.0f} B"


def cells(row: LayerRow) -> tuple[str, ...]:
    """One row as the terminal and Markdown tables show it."""
    return (row.name, ", ".join(row.taps), row.kind, volume(row.shape), f"{row.activations:,}",
            size_text(row.memory_bytes), row.weight_formula or f"{row.weights:,}", f"{row.biases:,}",
            row.param_formula or f"{row.params:,}", f"{row.macs:,}", _pair(_rf(row)), _pair(_stride(row)))


def title(result: Inspection) -> str:
    about = f": {result.description}" if result.description else ""
    return (f"{result.model}{about} — {result.input_size}×{result.input_size}×3 input, "
            f"{result.dtype} activations, one row per {result.depth}")


def totals_lines(result: Inspection) -> list[str]:
    t = result.totals
    return [
        f"parameters: {t.parameters:,} (weights {t.weights:,} + biases {t.biases:,})",
        f"activation memory per image: {t.memory:,} values × {result.bytes_per_value} B = {t.memory_bytes:,} B "
        f"≈ {size_text(t.memory_bytes)} forward; ≈ {size_text(t.training_bytes)} with backward (×2, rough)",
        f"multiply-accumulates per image: {t.macs:,} ≈ {t.macs / 1e9:.2f} GMACs (convolutions and Linear layers)",
        "memory: what each row newly stores (in-place ReLU, eval-mode dropout and views add nothing); "
        "RF, stride: receptive field and jump of one output unit, in input pixels",
    ]


def rich_table(result: Inspection) -> Table:
    table = Table(title=title(result), title_justify="left")
    for header in HEADERS:
        table.add_column(header, justify="right" if header in NUMERIC else "left")
    for row in result.rows:
        table.add_row(*cells(row))
    return table


def to_markdown(result: Inspection) -> str:
    lines = [f"**{title(result)}**", "", "| " + " | ".join(HEADERS) + " |",
             "|" + "|".join("---:" if h in NUMERIC else "---" for h in HEADERS) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells(row)) + " |" for row in result.rows]
    lines += ["", *(f"- {line}" for line in totals_lines(result))]
    return "\n".join(lines) + "\n"


def _record(row: LayerRow, result: Inspection) -> dict:
    """One row with raw numbers, for CSV and JSON."""
    return {
        "layer": row.name, "tap": " ".join(row.taps), "kind": row.kind, "output": volume(row.shape),
        "activations": row.activations, "activation_bytes": row.activations * result.bytes_per_value,
        "memory_values": row.memory, "memory_bytes": row.memory_bytes, "weights": row.weights, "biases": row.biases,
        "parameters": row.params, "weight_formula": row.weight_formula, "param_formula": row.param_formula,
        "macs": row.macs,
        "rf": _pair(_rf(row)), "stride": _pair(_stride(row)),
    }


def to_csv(result: Inspection) -> str:
    records = [_record(row, result) for row in result.rows]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()


def to_json(result: Inspection) -> str:
    t = result.totals
    doc = {
        "model": result.model, "description": result.description, "input_size": result.input_size,
        "depth": result.depth, "dtype": result.dtype, "bytes_per_value": result.bytes_per_value,
        "totals": {"parameters": t.parameters, "weights": t.weights, "biases": t.biases, "memory_values": t.memory,
                   "memory_bytes": t.memory_bytes, "training_bytes": t.training_bytes, "macs": t.macs},
        "rows": [_record(row, result) | {"taps": list(row.taps), "shape": list(row.shape), "rf": _rf(row),
                                         "stride": _stride(row)} for row in result.rows],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def render(result: Inspection, fmt: str) -> str:
    """``csv``, ``markdown`` or ``json`` text (the terminal table is :func:`rich_table`)."""
    return {"csv": to_csv, "markdown": to_markdown, "json": to_json}[fmt](result)
