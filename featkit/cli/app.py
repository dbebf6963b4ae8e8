"""The ``featkit`` command: one typer app, one error handler turning FeatkitError into a one-line message."""

from __future__ import annotations

import logging
import os
import sys

import typer
from typer import _click  # typer's own copy of click: the command and its exceptions

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
from featkit.cli import serve as serve_cmd
from featkit.cli import store as store_cmd
from featkit.cli import verify as verify_cmd
from featkit.errors import FeatkitError, Interrupted

# Command modules import torch, torchvision and friends inside their commands, so `featkit --help` and
# usage errors answer at once instead of after seconds of imports.
app = typer.Typer(
    name="featkit",
    help="Features from named layers of pretrained CNNs into a resumable feature store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _LineFormatter(logging.Formatter):
    """``warning: ...`` and ``info: ...``, as the CLI's other lines read."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _version(show: bool) -> None:
    if show:
        from featkit import __version__

        print(f"featkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks (or set FEATKIT_DEBUG=1)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what featkit does."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads to compute with (or set "
                                       "FEATKIT_NUM_THREADS; default: one per core, fewer on a busy machine)."),
) -> None:
    if debug:
        os.environ["FEATKIT_DEBUG"] = "1"
    if threads is not None:
        os.environ["FEATKIT_NUM_THREADS"] = str(threads)  # featkit._device applies it before computing
    root = logging.getLogger()
    if not any(isinstance(h.formatter, _LineFormatter) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(_LineFormatter())
        root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


app.command("models")(models_cmd.models)
app.command("taps")(models_cmd.taps)
app.command("inspect")(inspect_cmd.inspect)
app.command("extract")(extract_cmd.extract)
app.command("predict")(predict_cmd.predict)
app.command("info")(store_cmd.info)
app.command("verify")(verify_cmd.verify)
app.command("probe")(probe_cmd.probe)
app.command("bench")(bench_cmd.bench)
app.command("recipes")(finetune_cmd.recipes)
app.command("finetune")(finetune_cmd.finetune)
app.command("demo")(demo_cmd.demo)
app.add_typer(data_cmd.app, name="data")
app.add_typer(index_cmd.app, name="index")
app.add_typer(store_cmd.app, name="store")
app.command("search")(index_cmd.search)
app.command("dedup")(index_cmd.dedup)
app.command("serve")(serve_cmd.serve)


def command() -> _click.Command:
    """The click command behind ``app``, with flags shown as flags (no ``<bool>`` after ``--l2`` in --help)."""
    group = typer.main.get_command(app)

    def plain_flags(cmd) -> None:
        for param in cmd.params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
        for sub in getattr(cmd, "commands", {}).values():
            plain_flags(sub)

    plain_flags(group)
    return group


def main() -> None:
    """Console entry point: FeatkitError → ``error: ...`` on stderr and exit code 1 (traceback with --debug).

    Ctrl-C ends with the one line saying what was saved (exit code 130); usage errors are typer's, without the
    "Value error, " its type conversion puts before choice errors.
    """
    from typer import rich_utils

    try:
        code = command().main(prog_name="featkit", standalone_mode=False)
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        sys.exit(130)
    except FeatkitError as exc:
        if os.environ.get("FEATKIT_DEBUG") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except _click.exceptions.ClickException as exc:
        exc.message = exc.message.replace("Value error, ", "")
        rich_utils.rich_format_error(exc)
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("Aborted.", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
