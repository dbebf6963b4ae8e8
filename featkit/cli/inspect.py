"""``featkit inspect``: the layer-by-layer table of a backbone — volume, memory, parameters, MACs, receptive field."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from featkit.choices import ActivationDType, InspectDepth, TableFormat
from featkit.cli._console import console as make_console


def inspect(
    model: Annotated[str, typer.Argument(help="Backbone name (featkit models).", show_default=False)],
    input_size: Annotated[int | None, typer.Option("--input", min=1, show_default=False,
                                                   help="Square input side in pixels. Default: the model's "
                                                        "(224; 227 for alexnet2012).")] = None,
    depth: Annotated[InspectDepth, typer.Option(
        help="layer: every layer; block: conv+ReLU, Bottleneck, Fire, ...; stage: ResNet's layer1..4, VGG's blocks "
             "between pools.")] = InspectDepth.layer,
    fmt: Annotated[TableFormat, typer.Option(
        "--format", "-f", help="table (terminal), csv, markdown or json on stdout.")] = TableFormat.table,
    dtype: Annotated[ActivationDType, typer.Option(
        help="Bytes per activation value for the memory columns.")] = ActivationDType.float32,
    plot: Annotated[Path | None, typer.Option(
        help="Also draw activation memory and parameters per row into this PNG.")] = None,
) -> None:
    """Per-layer output volume, activation memory, parameters, MACs and receptive field of MODEL, with totals.

    Example: featkit inspect vgg16 --depth stage
    """
    from featkit.inspect import InspectConfig, inspect_backbone
    from featkit.reports import tables

    result = inspect_backbone(InspectConfig(model, input_size, depth.value, dtype.value))
    if fmt is TableFormat.table:
        console = make_console()
        console.print(tables.rich_table(result))
        for line in tables.totals_lines(result):
            console.print(line, markup=False)
    else:
        typer.echo(tables.render(result, fmt.value), nl=False)
    if plot is not None:
        from featkit.reports.plots import (
            plot_layers,  # matplotlib only when a picture is asked for
        )

        make_console(stderr=True).print(f"wrote {plot_layers(result, plot)}", markup=False)
