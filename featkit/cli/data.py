"""``featkit data list | show | prepare``: the datasets featkit has data cards for, and getting them on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from featkit.cli._console import console as make_console
from featkit.datasets.cards import get_card, list_cards

app = typer.Typer(help="Datasets with data cards: what they hold and how probes evaluate on them.",
                  no_args_is_help=True)


@app.command("list")
def list_command() -> None:
    """List every data card: classes, split sizes and the metric its protocol reports."""
    table = Table(title="featkit data cards", title_justify="left")
    for col in ("name", "title", "classes", "splits", "metric"):
        table.add_column(col, justify="right" if col == "classes" else "left")
    for card in list_cards():
        splits = ", ".join(f"{k} {v:,}" for k, v in (card.splits or {}).items()) or "yours"
        table.add_row(card.name, card.title, f"{card.classes:,}" if card.classes else "-", splits, card.metric)
    make_console().print(table)


@app.command("show")
def show(name: Annotated[str, typer.Argument(help="Dataset name, e.g. cifar10 (featkit data list).")]) -> None:
    """Show one data card: source, licence, splits, loader, protocol notes and known gotchas."""
    card = get_card(name)
    console = make_console()
    console.print(f"[bold]{card.title}[/] ({card.name}): {card.task}, {card.classes or 'any number of'} classes, "
                  f"metric {card.metric}")
    console.print(f"source: {card.source or '-'}\nlicence: {card.license}\ncitation: {card.citation or '-'}")
    for split, count in (card.splits or {}).items():
        console.print(f"  {split}: {count:,} images")
    loader = card.loader
    how = (f"torchvision.datasets.{loader.torchvision_class}" if loader.torchvision_class
           else loader.layout or loader.kind)
    console.print(f"loader: {how}")
    console.print(f"protocol: {card.protocol_notes}")
    for gotcha in card.gotchas:
        console.print(f"  ! {gotcha}")
    console.print(f"card: {card.path}")


@app.command("prepare")
def prepare_command(
    name: Annotated[str, typer.Argument(help="Dataset name, e.g. cifar10 (featkit data list).")],
    root: Annotated[
        Path | None,
        typer.Option("--root", help="Data root: downloads go to ROOT/NAME/, or an existing copy there is used. "
                     "Default: $FEATKIT_DATA, else ~/.cache/featkit/data."),
    ] = None,
    no_download: Annotated[
        bool, typer.Option("--no-download", help="Never touch the network: use the copy under ROOT/NAME/ "
                           "(or --from) or fail."),
    ] = False,
    per_class: Annotated[
        int | None,
        typer.Option("--per-class", min=1, help="At most N images per class per split, in a separate folder "
                     "(smoke runs only; not the benchmark number)."),
    ] = None,
    source: Annotated[
        Path | None,
        typer.Option("--from", help="The unpacked folder you already have (e.g. 101_ObjectCategories/, "
                     "cifar-10-batches-py/, hymenoptera_data/), or its archive, wherever it is: linked under "
                     "ROOT/NAME/ where torchvision looks, not copied."),
    ] = None,
) -> None:
    """Download a dataset (through torchvision) or use the copy you have: under --root, or --from a folder.

    Verify it against its data card, and write it as an ImageFolder (ROOT/NAME/images/{train,val,test}/CLASS/)
    that featkit extract reads. An unpacked folder or archive under ROOT/NAME/ (or two folders below) is found
    and used; a failed run leaves no folder of its own behind.

    Example: featkit data prepare caltech101 --root ~/data --no-download --from ~/Downloads/101_ObjectCategories
    """
    from featkit.datasets.prepare import prepare

    done = prepare(name, root, download=not no_download, per_class=per_class, progress=True, source=source)
    console = make_console()
    console.print(f"[bold]{done.name}[/] prepared at {done.folder}")
    for split, count in done.counts.items():
        console.print(f"  {split}: {count:,} images")
    if done.per_class is not None:
        console.print(f"  (at most {done.per_class} per class per split: a smoke run, not the benchmark number)")
    console.print(f"next: featkit extract --model resnet50 --layer avgpool {done.folder} -o feats/ "
                  f"&& featkit probe feats/ --tap avgpool")
