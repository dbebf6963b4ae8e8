"""``featkit verify``: re-hash a store, index or fine-tuning run against the sha256 its manifest recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from featkit.cli._console import console as make_console
from featkit.cli._options import JsonOpt, QuietOpt


def verify(
    path: Annotated[Path, typer.Argument(help="A feature store, index or fine-tuning run directory.")],
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Re-hash every file of a store, index or fine-tuning run against the sha256 its manifest recorded.

    Exit code 1 names each file that is missing, truncated, replaced or corrupt; 0 when every file matches.

    Example: featkit verify feats/
    """
    from featkit.api import verify as verify_path

    result = verify_path(path, progress=not quiet and not as_json)
    if as_json:
        print(json.dumps({"path": str(path), "kind": result.kind, "ok": result.ok, "files": result.files,
                          "bytes": result.bytes, "seconds": round(result.seconds, 3),
                          "bad": [{"path": str(b.path), "problem": b.problem} for b in result.bad],
                          "unchecked": [str(p) for p in result.unchecked]}))
    else:
        out, err = make_console(), make_console(stderr=True)
        for bad in result.bad:
            err.print(f"bad: {bad.path}: {bad.problem}", markup=False, soft_wrap=True)
        if result.unchecked:
            names = ", ".join(p.name for p in result.unchecked)
            out.print(f"no checksum recorded for: {names}", markup=False, soft_wrap=True)
        if result.ok and not result.files:
            out.print(f"{path}: no file of this {result.kind} records a sha256; nothing was checked.", markup=False,
                      soft_wrap=True)
        elif result.ok:
            out.print(f"{path}: {result.kind} ok: {result.files:,} files ({result.bytes / 2**20:,.1f} MiB) match their "
                      f"recorded sha256, checked in {result.seconds:.1f} s", markup=False, soft_wrap=True)
        else:
            err.print(f"{path}: {len(result.bad):,} of {result.files:,} files of the {result.kind} are bad; "
                      f"{_ADVICE[result.kind].format(path=path)}.", markup=False, soft_wrap=True)
    if not result.ok:
        raise typer.Exit(1)


_ADVICE = {  # Verified.kind → what to do about bad files
    "feature store": "copy the store again, or recompute it with featkit extract ... -o {path} --overwrite",
    "index": "copy the index again, or rebuild it with featkit index build STORE -o {path} --overwrite",
    "fine-tuning run": "copy the run again, or train it again with featkit finetune",
}
