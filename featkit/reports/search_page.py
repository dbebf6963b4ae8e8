"""A self-contained HTML page of search results: each query beside its neighbours, as thumbnails with scores.

Thumbnails are embedded as base64 JPEG (the page opens anywhere, offline, without the photo folder), decoded
with featkit's safe decoder; each one links to its full image by ``file://`` URL, for whoever has the photo folder.
A header says which index was searched; neighbours whose label differs from the query's are marked in text as well
as colour; queries that could not be read are listed with the reason. Every path, label and message is
HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from featkit.data import shards
from featkit.data.decode import decode_image

THUMB = 160

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.3em;margin:0 0 .5em} h2{font-size:1.1em}
dl.index{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:0;font-size:13px}
dl.index dt{color:#666} dl.index dd{margin:0}
.query{margin:1.2em 0;padding:1em;background:#fff;border:1px solid #ddd;border-radius:6px}
.summary{margin:0 0 .7em;font-size:13px}
.row{display:flex;gap:14px;align-items:flex-start}
.hits{display:flex;flex-wrap:wrap;gap:14px;flex:1}
figure{margin:0;width:THUMBpx;font-size:12px}
figure.q{flex:none;box-sizing:content-box;padding-right:14px;border-right:3px solid #4a7;align-self:stretch}
figure a{display:block;color:inherit;text-decoration:none}
.img{position:relative;width:THUMBpx;height:THUMBpx;display:flex;align-items:center;justify-content:center;
 background:#eee}
.img img{display:block;max-width:THUMBpx;max-height:THUMBpx}
figcaption{margin-top:4px;line-height:1.35;overflow-wrap:anywhere}
.name{color:#444}
.score{font-weight:bold}
figure.differs .img{outline:3px dashed #b3261e;outline-offset:-3px}
.flag{position:absolute;top:5px;left:5px;padding:1px 6px;border-radius:3px;background:#b3261e;color:#fff;
 font-weight:bold;font-size:11px}
.label.differs{color:#b3261e;font-weight:bold}
.unknown{color:#666;font-style:italic}
.missing{color:#a33;font-size:11px;padding:4px;text-align:center}
table.skipped{border-collapse:collapse;background:#fff;font-size:13px}
table.skipped th,table.skipped td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
table.skipped td{overflow-wrap:anywhere;max-width:40em} table.skipped td.reason{white-space:nowrap}
""".replace("THUMBpx", f"{THUMB}px")

# Where a long name may wrap: after "_", "-" or "/", before "." (not a leading one, nor the final extension's, so
# ".jpg" never ends up alone on a line), and between "aB". A name with none of these still wraps (CSS
# overflow-wrap: anywhere), mid-word, as a last resort.
_BREAKS = re.compile(r"(?<=[_\-/])(?=[^_\-/])|(?<=[^./])(?=\.(?![^./]{1,5}$))|(?<=[a-z])(?=[A-Z])")


@dataclass(frozen=True, kw_only=True)
class IndexSummary:
    """What the page's header says about the index searched.

    Attributes:
        path: where the index is.
        model: backbone name.
        weights: the weights' id (torchvision enum name, ``random(seed=N)`` or a file name).
        tap: the indexed tap; pool: how its maps were pooled.
        vectors: vectors in the index; dims: their dimension, pca: the dimension PCA reduced them to (or None).
        kind: flat, hnsw, ivf or ivfpq; factory: the FAISS factory string.
        metric: ``cosine`` (scores are cosine similarities) or ``l2`` (Euclidean distances).
    """

    path: str
    model: str
    weights: str
    tap: str
    pool: str
    vectors: int
    dims: int
    pca: int | None
    kind: str
    factory: str
    metric: str


def query_labels(queries: Iterable[Any], indexed: pd.DataFrame) -> dict[str, str]:
    """The label of each query image whose label is known, for marking neighbours with another label.

    A query's label is its own label when the image is itself indexed (same absolute path), else the name of the
    folder it lies in when that name is one of the index's labels (``val/ants/x.jpg`` searched in an index of
    ``train/ants`` and ``train/bees``). Other queries, and vectors, are left out: the page compares no neighbour
    with them and says so.

    Args:
        queries: the ``query`` values of a search result (paths, or row numbers for vectors).
        indexed: the index's rows (columns path and label, as ``Index.ids``).
    """
    labelled = indexed.dropna(subset=["label"])
    known = set(labelled["label"].astype(str))
    paths = [q for q in dict.fromkeys(queries) if isinstance(q, str)]
    own = labelled[labelled["path"].isin(paths)]
    found = dict(zip(own["path"], own["label"].astype(str), strict=True))
    listed = set(indexed["path"])
    for q in paths:
        folder = Path(q).parent.name
        if q not in listed and folder in known:
            found[q] = folder
    return found


def jpeg_thumbnail(path: str, size: int, *, quality: int = 80, draft: bool = True) -> bytes:
    """The image at ``path`` decoded by featkit's safe decoder, at most ``size`` px a side, as JPEG bytes.

    Raises:
        DecodeError: the file is missing or not an image featkit decodes.
    """
    image = decode_image(path, min_side=size if draft else None)
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def thumbnail(path: str, size: int = THUMB) -> str | None:
    """A ``data:`` URI of a JPEG thumbnail, or None when the file cannot be read as an image."""
    try:
        data = jpeg_thumbnail(path, size)
    except Exception:  # noqa: BLE001 - a missing or bad file shows as a placeholder, not a crashed report
        return None
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def file_url(path: str) -> str:
    """The ``file://`` URL of ``path`` made absolute, percent-encoded (spaces, ``#``, ``<``, ``&``, non-ASCII)."""
    return Path(os.path.abspath(path)).as_uri()


def breakable(text: str) -> str:
    """``text`` HTML-escaped, with ``<wbr>`` where a long file name may wrap (see ``_BREAKS``)."""
    return "<wbr>".join(html.escape(part) for part in _BREAKS.split(text))


def _figure(path: str, caption: str, *, css: str = "", flag: str = "") -> str:
    uri = thumbnail(path)
    body = f'<img src="{uri}" alt="">' if uri else '<div class="missing">not readable here</div>'
    flag = f'<span class="flag">{flag}</span>' if flag else ""
    full = html.escape(path)
    picture = f'<div class="img">{body}{flag}</div>'
    if shards.split_member(path) is None:  # a member of a shard has no file:// URL of its own
        picture = f'<a href="{html.escape(file_url(path))}" title="{full}">{picture}</a>'
    return (f'<figure class="{css}">{picture}<figcaption>{caption}'
            f'<div class="name" title="{full}">{breakable(os.path.basename(path))}</div></figcaption></figure>')


def _header(index: IndexSummary, *, queries: int, skipped: int, k: int) -> str:
    dims = f"{index.dims:,} → {index.pca:,} (PCA)" if index.pca else f"{index.dims:,}"
    fields = [("index", index.path), ("model", index.model), ("weights", index.weights),
              ("tap", f"{index.tap} ({index.pool} pool)" if index.pool != "none" else f"{index.tap} (not pooled)"),
              ("size", f"{index.vectors:,} vectors × {dims} dims, {index.kind} ({index.factory}), {index.metric}"),
              ("queries", f"{queries:,} searched, {skipped:,} skipped, {k} neighbours each")]
    rows = "".join(f'<dt>{name}</dt><dd data-field="{name}">{html.escape(value)}</dd>' for name, value in fields)
    return f'<dl class="index">{rows}</dl>'


def _query_section(query: Any, hits: pd.DataFrame, label: str | None, score_name: str) -> str:
    parts = ['<section class="query">']
    ordered = hits.sort_values("rank")
    names: list[str | None] = [None if pd.isna(v) else str(v) for v in ordered["label"].tolist()]
    differs = [label is not None and name is not None and name != label for name in names]
    if label is None:
        summary = "The query's label is not known: neighbours are not compared with it."
    else:
        n = sum(differs)
        summary = (f"Query label <b>{html.escape(label)}</b>: {n} of {len(names)} neighbours "
                   f"{'has' if n == 1 else 'have'} another label (marked ≠).")
    parts.append(f'<p class="summary">{summary}</p><div class="row">')
    if isinstance(query, str):
        known = (f'<div class="label">label {html.escape(label)}</div>' if label is not None
                 else '<div class="label unknown">label unknown</div>')
        parts.append(_figure(query, f"<b>query</b>{known}", css="q"))
    else:
        parts.append(f'<figure class="q"><b>query vector {html.escape(str(query))}</b></figure>')
    parts.append('<div class="hits">')
    hit: Any  # a row's fields are the frame's columns, whose types pandas-stubs cannot know
    for hit, name, other in zip(ordered.itertuples(), names, differs, strict=True):
        if name is None:
            shown = '<div class="label unknown">no label</div>'
        elif other:
            shown = f'<div class="label differs">≠ {html.escape(name)}</div>'
        else:
            shown = f'<div class="label">{html.escape(name)}</div>'
        caption = f'#{hit.rank} <span class="score">{score_name} {hit.score:.3f}</span>{shown}'
        parts.append(_figure(str(hit.path), caption, css="differs" if other else "",
                             flag="≠ other label" if other else ""))
    parts.append("</div></div></section>")
    return "".join(parts)


def _skipped_section(skipped: pd.DataFrame) -> str:
    rows = "".join(f'<tr><td title="{html.escape(str(row.path))}">{breakable(str(row.path))}</td>'
                   f'<td class="reason">{html.escape(str(row.reason))}</td>'
                   f"<td>{html.escape(str(row.message))}</td></tr>"
                   for row in skipped.itertuples())
    return (f'<section id="skipped"><h2>Skipped queries ({len(skipped)})</h2><table class="skipped">'
            f"<tr><th>query</th><th>reason</th><th>message</th></tr>{rows}</table></section>")


def search_page(results: pd.DataFrame, *, index: IndexSummary, title: str, skipped: pd.DataFrame | None = None,
                labels: Mapping[str, str] | None = None) -> str:
    """The HTML text for ``results``.

    Args:
        results: columns query, rank, path, score, label, as :meth:`Index.search` returns.
        index: the index searched, for the header (its metric also names the scores).
        title: the page's title.
        skipped: queries that could not be read (columns path, reason, message: ``results.attrs["failures"]``).
        labels: query → its label (see :func:`query_labels`); a neighbour with another label is marked ``≠``.
            Neighbours of a query without one are not compared.
    """
    skipped = skipped if skipped is not None else pd.DataFrame(columns=["path", "reason", "message"])
    labels = labels or {}
    score_name = "cosine" if index.metric == "cosine" else "distance"
    k = int(results["rank"].max()) if len(results) else 0
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             _header(index, queries=int(results["query"].nunique()), skipped=len(skipped), k=k)]
    if len(skipped):
        parts.append(_skipped_section(skipped))
    for query, hits in results.groupby("query", sort=False):
        parts.append(_query_section(query, hits, labels.get(query) if isinstance(query, str) else None, score_name))
    parts.append("</body></html>\n")
    return "".join(parts)
