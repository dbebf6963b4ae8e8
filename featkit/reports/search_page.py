"""A self-contained HTML page of search results: each query beside its neighbours, as thumbnails with scores.

Thumbnails are embedded as base64 JPEG (the page opens anywhere, offline, without the photo folder), decoded
with featkit's safe decoder, and every path or label is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import pandas as pd

from featkit.data.decode import decode_image

THUMB = 160

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.3em} .query{margin:1.5em 0;padding:1em;background:#fff;border:1px solid #ddd;border-radius:6px}
.row{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
figure{margin:0;width:THUMBpx;font-size:12px} figure.q{border-right:3px solid #4a7;padding-right:10px;width:auto}
.img{width:THUMBpx;height:THUMBpx;display:flex;align-items:center;justify-content:center;background:#eee}
.img img{max-width:THUMBpx;max-height:THUMBpx} figcaption{word-break:break-all;margin-top:3px}
.score{font-weight:bold} .missing{color:#a33;font-size:11px;padding:4px;text-align:center}
""".replace("THUMBpx", f"{THUMB}px")


def thumbnail(path: str, size: int = THUMB) -> str | None:
    """A ``data:`` URI of a JPEG thumbnail, or None when the file cannot be read as an image."""
    try:
        image = decode_image(path, min_side=size)
    except Exception:  # noqa: BLE001 - a missing or bad file shows as a placeholder, not a crashed report
        return None
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(path: str, caption: str, css: str = "") -> str:
    uri = thumbnail(path) if isinstance(path, str) else None
    body = f'<img src="{uri}" alt="">' if uri else '<div class="missing">not readable here</div>'
    return (f'<figure class="{css}"><div class="img">{body}</div>'
            f'<figcaption>{caption}<br>{html.escape(str(path))}</figcaption></figure>')


def search_page(results: pd.DataFrame, *, title: str, score_name: str = "cosine") -> str:
    """The HTML text for ``results`` (columns query, rank, path, score, label as :meth:`Index.search` returns)."""
    head = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>")
    parts = [head]
    for query, hits in results.groupby("query", sort=False):
        parts.append('<section class="query"><div class="row">')
        parts.append(_figure(query, "<b>query</b>", "q") if isinstance(query, str)
                     else f'<figure class="q"><b>query vector {html.escape(str(query))}</b></figure>')
        hit: Any  # a row's fields are the frame's columns, whose types pandas-stubs cannot know
        for hit in hits.sort_values("rank").itertuples():
            label = "" if pd.isna(hit.label) else f" · {html.escape(str(hit.label))}"
            parts.append(_figure(hit.path,
                                 f'#{hit.rank} <span class="score">{score_name} {hit.score:.3f}</span>{label}'))
        parts.append("</div></section>")
    parts.append("</body></html>\n")
    return "".join(parts)
