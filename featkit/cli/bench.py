"""``featkit bench``: which layer of which model transfers best to which dataset (linear-probe benchmark)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from featkit.choices import Pool, Precision, ProbeKind
from featkit.cli._console import console as make_console
from featkit.cli._options import BatchSizeOpt, DeviceOpt, PoolOpt, PrecisionOpt


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def bench(
    models: Annotated[str, typer.Option(
        "--models", help="Comma-separated backbones, e.g. alexnet,vgg16,resnet50.")] = "resnet50",
    taps: Annotated[str, typer.Option(
        "--taps", help="Comma-separated taps, shallow to deep; each model is probed on those it has.")] = "avgpool",
    datasets: Annotated[str, typer.Option(
        "--datasets", help="Comma-separated data cards (featkit data list) or ImageFolder paths with train/, "
                           "optional val/, and test/.")] = "digits",
    output: Annotated[Path, typer.Option(
        "--output", "-o",
        help="Folder for results.csv, results.md, runs/*.json and accuracy.png.")] = Path("bench_out"),
    weights: Annotated[str, typer.Option(
        "--weights", "-w", help="imagenet, random (seeded) or a weights file, for every model; or per model: "
                                "resnet50=FILE,vgg16=imagenet (models left out: imagenet).")] = "imagenet",
    probe: Annotated[ProbeKind, typer.Option(
        help="linear: logistic regression, C chosen on val or by 5-fold CV; knn: cosine kNN.")] = ProbeKind.linear,
    pool: PoolOpt = Pool.avg,
    per_class: Annotated[int | None, typer.Option(
        "--per-class", help="Only N images per class and split (of a data card or your folder): a smoke run, not a "
                            "benchmark number.")] = None,
    limit: Annotated[int | None, typer.Option(
        "--limit", help="Only the first N images of each dataset: a smoke run, not a benchmark number.")] = None,
    data_root: Annotated[Path | None, typer.Option(
        "--data-root", help="Where datasets are prepared (default: $FEATKIT_DATA or ~/.cache/featkit/data).")] = None,
    cache: Annotated[Path | None, typer.Option(
        "--cache", help="Feature stores kept between runs (default: $FEATKIT_CACHE or "
                        "~/.cache/featkit/features).")] = None,
    grid: Annotated[str, typer.Option(
        "--grid",
        help="The linear probe's C values: LOW:HIGH:N log-spaced, or a comma-separated list.")] = "1e-6:1e5:45",
    k: Annotated[int, typer.Option("--k", min=1, help="Neighbours for --probe knn.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the validation split and of --weights random.")] = 0,
    batch_size: BatchSizeOpt = 32,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    no_download: Annotated[bool, typer.Option("--no-download", help="Never download datasets or weights.")] = False,
) -> None:
    """Extract (or re-use cached) features, probe every tap of every model on every dataset, report the scores.

    Writes results.csv, results.md, runs/*.json (every setting, seed, versions, timings) and accuracy.png.

    Example: featkit bench --models alexnet,vgg16,resnet50 --taps pool5,fc6,fc7,avgpool --datasets digits,hymenoptera
    """
    from featkit.bench.config import BenchConfig, parse_grid
    from featkit.bench.runner import run_bench
    from featkit.reports.bench import to_frame, to_markdown, write_results

    cfg = BenchConfig(models=_names(models), taps=_names(taps), datasets=_names(datasets), output=output,
                      weights=weights, pool=pool, probe=probe, per_class=per_class, limit=limit, data_root=data_root,
                      cache=cache, seed=seed, grid=parse_grid(grid), k=k, batch_size=batch_size, device=device,
                      precision=precision, download=not no_download)
    console = make_console()
    report = run_bench(cfg, progress=True, echo=console.print)
    paths = write_results(report.rows, list(cfg.taps), output, cfg.smoke)
    console.print()
    console.print(to_markdown(to_frame(report.rows), cfg.smoke), markup=False, highlight=False)
    reused = sum(not r.extracted for r in report.rows)
    console.print(f"{len(report.rows)} probes in {report.seconds:.1f} s ({reused} on cached features); wrote "
                  f"{paths['csv']}, {paths['markdown']}, {paths['plot']} and {len(report.runs)} files in "
                  f"{output / 'runs'}")
