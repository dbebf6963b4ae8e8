"""``featkit models`` and ``featkit taps``: what can be extracted."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from featkit.choices import Pool
from featkit.cli._console import console as make_console
from featkit.errors import ParameterError


def _weights_cell(name: str) -> str:
    from featkit.backbones import checkpoints
    from featkit.backbones.weights import default_weights_enum

    enum = default_weights_enum(name)
    if enum is None:
        return "random only"
    cached = checkpoints.hub_checkpoint_path(enum.url).exists()
    return f"{enum.name} ({'cached' if cached else 'not cached'})"


def models(
    all_models: Annotated[bool, typer.Option("--all", help="Also list every other torchvision classifier.")] = False,
) -> None:
    """List the backbones, their default tap and which ImageNet weights are available."""
    from featkit.backbones.registry import curated_backbones, describe, list_backbones

    table = Table(title="featkit backbones", title_justify="left")
    for col in ("model", "family", "default tap", "dims", "imagenet weights"):
        table.add_column(col)
    for name in curated_backbones():
        spec = describe(name)
        tap = spec.tap(spec.default_tap)
        table.add_row(name, spec.family, tap.name, f"{tap.flat_dims:,}", _weights_cell(name))
    others = [n for n in list_backbones() if n not in curated_backbones()]
    if all_models:
        for name in others:
            table.add_row(name, "torchvision", "penultimate", "", _weights_cell(name))
    console = make_console()
    console.print(table)
    if not all_models:
        console.print(f"…and {len(others)} other torchvision classifiers (featkit models --all); "
                      "their taps are their graph nodes: featkit taps NAME")


def taps(
    model: Annotated[str, typer.Argument(help="Backbone name, e.g. vgg16.")],
    pool: Annotated[Pool, typer.Option(help="Show dims and bytes under this pooling.")] = Pool.none,
) -> None:
    """List every tap of MODEL: name, aliases, graph node, output shape and layout, dims and bytes per image."""
    from featkit.backbones.registry import describe

    spec = describe(model)
    table = Table(title=f"{spec.name}: {spec.description} — shapes at {spec.input_size}×{spec.input_size}",
                  title_justify="left")
    for col in ("tap", "aliases", "node", "shape", "layout", "dims", "bytes/img (fp32)", "note"):
        table.add_column(col, justify="right" if col in ("dims", "bytes/img (fp32)") else "left")
    unpooled = 0
    for tap in spec.taps:
        mark = " *" if tap.name == spec.default_tap else ""
        try:
            dims = tap.dims(pool)
            sizes = (f"{dims:,}", f"{4 * dims:,}")
        except ParameterError:  # --pool cls on a map: no class token
            unpooled += 1
            sizes = ("—", "—")
        table.add_row(tap.name + mark, ", ".join(tap.aliases), tap.node, "×".join(map(str, tap.shape)),
                      tap.layout, *sizes, tap.note)
    console = make_console()
    console.print(table)
    if unpooled:
        console.print(f"—: --pool {pool.value} does not apply to {unpooled} map tap(s) (no class token).")
    console.print(f"* default tap. Extract: featkit extract --model {spec.name} --layer {spec.default_tap} "
                  f"PHOTOS/ -o feats/")
