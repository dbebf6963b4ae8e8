"""``featkit index build | add | remove | info``, ``featkit search`` and ``featkit dedup``: similar-image search."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from featkit.choices import Engine, IndexKind, SearchMetric
from featkit.cli._console import console as make_console
from featkit.cli._options import DeviceOpt, JsonOpt, QuietOpt, StoreArg, TapOpt

app = typer.Typer(help="Similar-image search indexes over a feature store: build, extend, inspect.",
                  no_args_is_help=True)


IndexArg = Annotated[Path, typer.Argument(help="An index directory (featkit index build ... -o NAME).")]
StoreWeightsOpt = Annotated[Path | None, typer.Option(
    "--weights", "-w", help="The weights file the store was extracted with (needed to embed query images when the "
                            "store used a file).")]


def _jsonable(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _records(frame) -> list[dict]:
    return [{k: _jsonable(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _describe(index) -> str:
    m = index.manifest
    params = ", ".join(f"{k} {v}" for k, v in m["search_params"].items())
    pca = f", PCA {m['dim']}→{m['pca']}" if m["pca"] else ""
    return (f"{len(index):,} × {m['dim']:,}-d {index.settings.model} {index.tap} ({m['metric']}{pca}); "
            f"{m['kind']} '{m['factory']}'{' ' + params if params else ''}; recall@10 vs exact {m['recall_at_10']:.3f}")


@app.command("build")
def build(
    store: StoreArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Index directory to write (e.g. photos.index).")],
    tap: TapOpt = None,
    kind: Annotated[IndexKind, typer.Option(
        help="auto: flat ≤ 10k vectors; above, the fastest at --recall of hnsw, ivf and ivfpq (re-ranked) that fit "
             "--max-memory, measured on a sample.")] = IndexKind.auto,
    metric: Annotated[SearchMetric, typer.Option(
        help="cosine (normalised, inner product) or l2.")] = SearchMetric.cosine,
    pca: Annotated[int | None, typer.Option(
        "--pca", min=1, help="Reduce to this many dimensions first (e.g. 256 for 4096-d taps).")] = None,
    max_memory: Annotated[str | None, typer.Option(
        "--max-memory", help="Memory the index may take, e.g. 8GB (default: half the RAM).")] = None,
    recall: Annotated[float, typer.Option(
        "--recall", min=0.0, max=1.0, help="recall@10 vs exact search that approximate kinds are tuned to.")] = 0.95,
    weights: StoreWeightsOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing index at --output.")] = False,
    engine: Annotated[Engine, typer.Option(
        help="local, or ray: IVF kinds add their vectors in parallel Ray tasks (extra featkit[ray]); the same "
             "search results.")] = Engine.local,
    address: Annotated[str | None, typer.Option(
        help="--engine ray: the cluster to join (auto, ray://HOST:PORT); default: a local Ray for the build.")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Build a similar-image index over one tap of a feature store.

    Example: featkit index build feats/ --tap fc7 -o photos.index
    """
    from featkit.index import Index
    from featkit.index.kinds import parse_bytes
    from featkit.index.manifest import check_target

    check_target(output, overwrite)  # refuse before minutes of building
    index = Index.build(store, tap=tap, kind=kind, metric=metric, pca=pca,
                        max_memory=parse_bytes(max_memory) if max_memory else None, recall_target=recall,
                        weights=weights, progress=not quiet, engine=engine, ray_address=address)
    index.save(output, overwrite=overwrite)
    console = make_console()
    console.print(f"[bold green]wrote[/] {output}: {_describe(index)}")
    console.print(f"  {index.manifest['reason']}; built in {index.manifest['build_seconds']:.1f} s")
    if index.manifest["recall_at_10"] < recall:
        console.print(f"note: recall@10 {index.manifest['recall_at_10']:.3f} is below the target {recall}; "
                      "raise --max-memory, drop --pca, or use --kind hnsw/ivf.")


@app.command("add")
def add(
    index_path: IndexArg,
    stores: Annotated[list[Path], typer.Argument(help="Feature stores made with the same model, weights and tap.")],
    quiet: QuietOpt = False,
) -> None:
    """Add the rows of more feature stores to an index (paths already indexed are skipped).

    Example: featkit index add photos.index more_feats/
    """
    from featkit.index import Index
    from featkit.store.reader import open_features

    index = Index.open(index_path)
    opened = [open_features(s) for s in stores]  # every store is checked before anything changes
    added = sum(index.add(s, progress=not quiet) for s in opened)
    index.save()
    make_console().print(f"[bold green]added[/] {added:,} vectors to {index_path}: now {len(index):,}")


@app.command("remove")
def remove(
    index_path: IndexArg,
    paths: Annotated[list[str], typer.Argument(
        help="Image paths as the index lists them (featkit search shows them).")],
) -> None:
    """Remove images from an index by path (flat and IVF kinds; HNSW cannot delete).

    Example: featkit index remove photos.index /photos/old/img_0001.jpg
    """
    from featkit.index import Index

    index = Index.open(index_path)
    removed = index.remove(paths)
    index.save()
    make_console().print(f"[bold green]removed[/] {removed:,} vectors from {index_path}: now {len(index):,}")


@app.command("info")
def info(index_path: IndexArg, as_json: JsonOpt = False) -> None:
    """Show what an index holds: source store, model, tap, kind, search settings and recall."""
    from featkit.index.manifest import read_manifest

    manifest = read_manifest(index_path)
    if as_json:
        print(json.dumps(manifest, indent=1))
        return
    from featkit.index import Index

    index = Index.open(index_path)
    console = make_console()
    s = index.settings
    console.print(f"[bold]{index_path}[/]: {_describe(index)}")
    console.print(f"weights {s.weights.id} (sha256 {s.weights.sha256[:12]}…), pool {s.pool}, "
                  f"faiss {manifest['faiss_version']}, {manifest['training_size']:,} training vectors")
    if isinstance(manifest.get("reason"), str):
        console.print(f"why this kind: {manifest['reason']}", highlight=False)
    for store in index.manifest["source"]["stores"]:
        console.print(f"  from {store}")


def search(
    index_path: IndexArg,
    queries: Annotated[list[Path], typer.Argument(help="Query images, folders of them, or a .npy file of vectors.")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Neighbours per query.")] = 10,
    as_json: JsonOpt = False,
    csv: Annotated[Path | None, typer.Option(
        "--csv", help="Write query, rank, path, score (+ label) to this CSV file.")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write a self-contained page of thumbnails.")] = None,
    weights: StoreWeightsOpt = None,
    device: DeviceOpt = "auto",
    nprobe: Annotated[int | None, typer.Option(help="Override the tuned nprobe (IVF kinds).", min=1)] = None,
    ef_search: Annotated[int | None, typer.Option(
        "--ef-search", help="Override the tuned efSearch (HNSW).", min=1)] = None,
    k_factor: Annotated[int | None, typer.Option(
        "--k-factor", min=1, help="Override the tuned re-rank factor (IVF-PQ: k × this many candidates re-ranked "
                                  "against the exact vectors in the store; 1: the codes alone, no store needed).")
    ] = None,
) -> None:
    """Find the indexed images most similar to each query (embedded exactly like the indexed images).

    Example: featkit search photos.index query.jpg -k 10
    """
    import numpy as np

    from featkit._atomic import write_bytes
    from featkit._files import not_a_file
    from featkit.errors import SearchIndexError
    from featkit.index import Index

    vectors_file = len(queries) == 1 and queries[0].suffix == ".npy"
    if vectors_file and (what := not_a_file(queries[0])) is not None:  # np.load would wait forever on a FIFO
        raise SearchIndexError(f"Query vectors {queries[0]} is {what}, not a file; pass the .npy file itself.")
    index = Index.open(index_path)
    params = {**({"nprobe": nprobe} if nprobe else {}), **({"efSearch": ef_search} if ef_search else {}),
              **({"k_factor": k_factor} if k_factor else {})}
    if vectors_file:
        try:
            vectors = np.load(queries[0], allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise SearchIndexError(f"Cannot read query vectors from {queries[0]}: {exc}") from None
        results = index.search(vectors, k, params=params)
    else:
        results = index.search([str(q) for q in queries], k, params=params, weights=weights, device=device)
    failures = results.attrs["failures"]
    columns = ["query", "rank", "path", "score"] + (["label"] if results["label"].notna().any() else [])
    table = results[columns]
    err = make_console(stderr=True)
    for row in failures.itertuples():
        err.print(f"skipped query {row.path}: {row.reason} ({row.message})")
    if csv is not None:
        write_bytes(csv, table.to_csv(index=False).encode())
        err.print(f"wrote {csv}: {len(table):,} rows")
    if html_out is not None:
        from featkit.reports.search_page import IndexSummary, query_labels, search_page

        summary = IndexSummary(path=str(index_path), model=index.settings.model, weights=index.settings.weights.id,
                               tap=index.tap, pool=index.settings.pool, vectors=len(index), dims=index.manifest["dim"],
                               pca=index.manifest["pca"], kind=index.kind, factory=index.manifest["factory"],
                               metric=index.metric)
        page = search_page(results, index=summary, title=f"featkit search: {index_path}", skipped=failures,
                           labels=query_labels(results["query"], index.ids))
        write_bytes(html_out, page.encode())
        err.print(f"wrote {html_out}")
    if as_json:
        print(json.dumps(_records(table)))
    elif csv is None and html_out is None:
        _print_table(table, make_console(), "cosine" if index.metric == "cosine" else "L2 distance", group_by="query")


def _print_table(frame, console, score_name: str, group_by: str | None = None) -> None:
    """``frame`` as a rich table, its cells as plain text (never rich markup).

    With ``group_by``, one section per value of that column, headed by the value (in the first two columns'
    place) instead of repeating it on every row.
    """
    from rich.table import Table
    from rich.text import Text

    def cells(row) -> list[Text]:
        return [Text("" if v is None or (isinstance(v, float) and math.isnan(v))
                     else f"{v:.4f}" if isinstance(v, float) else str(v)) for v in row]

    columns = [c for c in frame.columns if c != group_by]
    table = Table(title_justify="left")
    for col in columns:
        table.add_column(score_name if col == "score" else col, justify="right" if col in ("rank", "score") else "left")
    if group_by is None:
        for row in frame.itertuples(index=False):
            table.add_row(*cells(row))
    else:
        for key, rows in frame.groupby(group_by, sort=False):
            heading = [Text(group_by, style="bold"), Text(str(key), style="bold")]
            table.add_row(*heading, *[""] * (len(columns) - len(heading)))
            for i, row in enumerate(rows[columns].itertuples(index=False)):
                table.add_row(*cells(row), end_section=i == len(rows) - 1)
    console.print(table)


def dedup(
    store: StoreArg,
    tap: TapOpt = None,
    threshold: Annotated[float, typer.Option(
        help="Cosine similarity at or above which two images are duplicates (0.92: calibrated on photos with "
             "squeezenet1_1 fire9; see benchmarks/dedup_threshold.py).")] = 0.92,
    against: Annotated[Path | None, typer.Option(
        "--against", metavar="STORE2",
        help="Another feature store (e.g. the test set): list the images of STORE with a near-duplicate there "
             "(train/test leaks) instead of groups.")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the groups (or leaks) to a .csv or .json file.")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Find groups of near-duplicate images, or with --against, the images of STORE that reappear in STORE2.

    Groups come largest first, each with a representative to keep; leaks, one per image of STORE, closest first.

    Example: featkit dedup feats/ --tap fc7 -o dupes.csv; featkit dedup train_feats/ --against test_feats/
    """
    from featkit._atomic import write_bytes
    from featkit.index.dedup import find_duplicates, find_leaks

    if against is not None:
        found = find_leaks(store, against, tap=tap, threshold=threshold, progress=not quiet)
    else:
        found = find_duplicates(store, tap=tap, threshold=threshold, progress=not quiet)
    if output is not None:
        data = json.dumps(_records(found)) if output.suffix.lower() == ".json" else found.to_csv(index=False)
        write_bytes(output, data.encode())
    if as_json:
        print(json.dumps(_records(found)))
        return
    console = make_console()
    wrote = f"; wrote {output}" if output else ""
    if against is not None:
        console.print(f"{len(found):,} images of {store} have a near-duplicate in {against} at cosine ≥ {threshold}"
                      + wrote)
        if len(found):
            _print_table(found.head(20), console, "cosine")
        if len(found) > 20:
            console.print(f"  … and {len(found) - 20:,} more (all of them: -o FILE.csv)")
        return
    n_groups = int(found["group"].nunique()) if len(found) else 0
    console.print(f"{n_groups:,} groups of near-duplicates ({len(found):,} images; "
                  f"{len(found) - n_groups:,} could go) at cosine ≥ {threshold}" + wrote)
    for group, members in list(found.groupby("group", sort=True))[:10]:
        rep = members.loc[members["representative"], "path"].iloc[0]
        console.print(f"  group {group}: {len(members)} images, keep {rep}")
