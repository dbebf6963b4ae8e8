"""Options several commands share, declared once as ``Annotated`` aliases (typer's idiom).

Choices come from :mod:`featkit.choices`, the enums the library validates against, so a command can never offer
a value the library refuses. Nothing here imports torch: ``featkit --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from featkit.choices import Pool, Precision

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Backbone (featkit models).")]
LayerOpt = Annotated[list[str] | None, typer.Option(
    "--layer", "-l", help="Tap to extract; repeat for several (featkit taps MODEL). Default: the model's default tap.")]
WeightsOpt = Annotated[str, typer.Option(
    "--weights", "-w", help="imagenet (torch hub cache), random (seeded), a .pth/.pt/.safetensors file, or a "
                            "featkit finetune run directory.")]
PoolOpt = Annotated[Pool, typer.Option(
    help="Maps and tokens → vectors: none (flatten); avg (= mean), max, gem over positions or tokens; cls: a ViT's "
         "class token.")]
PrecisionOpt = Annotated[Precision, typer.Option(
    help="Compute precision (bf16: CPUs with AVX512-BF16/AMX and GPUs; fp16: GPUs).")]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA, then MPS, then the CPU) | cpu | cuda | cuda:N | mps.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per forward pass.")]
TapOpt = Annotated[str | None, typer.Option("--tap", "-t", help="Tap to use (default: the store's only tap).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
LimitOpt = Annotated[int | None, typer.Option(
    "--limit", min=1, help="Only the first N images, in listing order: a smoke run.")]
PerClassOpt = Annotated[int | None, typer.Option(
    "--per-class", min=1, help="Only the first N images of each class in each split: a smoke run.")]
StoreArg = Annotated[Path, typer.Argument(help="A feature store directory (featkit extract ... -o STORE).")]
