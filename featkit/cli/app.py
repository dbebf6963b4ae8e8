"""The ``featkit`` command: one typer app, one error handler turning FeatkitError into a one-line message."""

from __future__ import annotations

import logging
import os
import sys

import typer

from featkit.cli import bench as bench_cmd
from featkit.cli import data as data_cmd
from featkit.cli import demo as demo_cmd
from featkit.cli import extract as extract_cmd
from featkit.cli import finetune as finetune_cmd
from featkit.cli import index as index_cmd
from featkit.cli import inspect as inspect_cmd
from featkit.cli import models as models_cmd
from featkit.cli import predict as predict_cmd
from featkit.cli import probe as probe_cmd
from featkit.cli import store as store_cmd
from featkit.errors import FeatkitError

# Command modules import torch, torchvision and friends inside their commands, so `featkit --help` and
# usage errors answer at once instead of after seconds of imports.
app = typer.Typer(
    name="featkit",
    help="Features from named layers of pretrained CNNs into a resumable feature store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks (or set FEATKIT_DEBUG=1)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what featkit does."),
) -> None:
    if debug:
        os.environ["FEATKIT_DEBUG"] = "1"
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


app.command("models")(models_cmd.models)
app.command("taps")(models_cmd.taps)
app.command("inspect")(inspect_cmd.inspect)
app.command("extract")(extract_cmd.extract)
app.command("predict")(predict_cmd.predict)
app.command("info")(store_cmd.info)
app.command("probe")(probe_cmd.probe)
app.command("bench")(bench_cmd.bench)
app.command("recipes")(finetune_cmd.recipes)
app.command("finetune")(finetune_cmd.finetune)
app.command("demo")(demo_cmd.demo)
app.add_typer(data_cmd.app, name="data")
app.add_typer(index_cmd.app, name="index")
app.command("search")(index_cmd.search)
app.command("dedup")(index_cmd.dedup)


def main() -> None:
    """Console entry point: FeatkitError → ``error: ...`` on stderr and exit code 1 (traceback with --debug)."""
    try:
        app()  # standalone: typer/click handle --help, usage errors and Ctrl-C themselves
    except FeatkitError as exc:
        if os.environ.get("FEATKIT_DEBUG") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
