"""``featkit predict``: the top-k classes of images, with their names and probabilities."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from featkit.cli._console import console as make_console
from featkit.cli._options import BatchSizeOpt, DeviceOpt, JsonOpt, ModelOpt, QuietOpt, WeightsOpt
from featkit.extraction.config import DEFAULT_MODEL


def predict(
    images: Annotated[list[Path], typer.Argument(
        help="Images, folders of them or list files (.csv/.parquet/.txt with a path column).", show_default=False)],
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = "imagenet",
    k: Annotated[int, typer.Option("-k", "--k", help="Classes per image (at most the number of classes).")] = 5,
    csv: Annotated[Path | None, typer.Option(
        "--csv", help="Write path, rank, label, index, prob to this CSV file (one row per image and rank).")] = None,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = 32,
    quiet: QuietOpt = False,
) -> None:
    """Print the k most probable classes of each image (ImageNet's, or a fine-tuned run's), with probabilities.

    Example: featkit predict --model squeezenet1_1 photos/ -k 5
    """
    from featkit._atomic import write_bytes
    from featkit.extraction.predict import predict as predict_images

    err = make_console(stderr=True)
    results = predict_images([str(p) for p in images], model=model, weights=weights, k=k, device=device,
                             batch_size=batch_size, progress=not quiet)
    for row in results.attrs["failures"].itertuples():
        err.print(f"skipped {row.path}: {row.reason} ({row.message})")
    if results.attrs["k"] < k:
        err.print(f"note: these weights have {results.attrs['k']} classes; showing all of them (-k {k}).")
    if weights == "random":
        err.print("note: --weights random: these predictions carry no meaning (labels are class indices).")
    if csv is not None:
        write_bytes(csv, results.to_csv(index=False).encode())
        err.print(f"wrote {csv}: {len(results):,} rows")
    if as_json:
        print(json.dumps(results.to_dict(orient="records")))
    elif csv is None:
        _print_table(results, results.attrs["k"], make_console())


def _print_table(frame, k: int, console) -> None:
    """One section per image: its path once, then its ``k`` classes."""
    from rich.table import Table

    table = Table(title_justify="left")
    for col in frame.columns:
        table.add_column(col, justify="right" if col in ("rank", "index", "prob") else "left")
    for i, row in enumerate(frame.itertuples(index=False)):
        first, last = i % k == 0, i % k == k - 1
        table.add_row(row.path if first else "", str(row.rank), row.label, str(row.index), f"{row.prob:.4f}",
                      end_section=last)
    console.print(table)
