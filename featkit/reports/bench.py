"""A benchmark's results as CSV, a Markdown table and a plot of the probe score per tap per model."""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from featkit._atomic import write_bytes


def to_frame(rows) -> pd.DataFrame:
    return pd.DataFrame([asdict(r) for r in rows])


def to_markdown(frame: pd.DataFrame, smoke: str = "") -> str:
    """One line per (dataset, model, tap) with the score in percent, C, sizes and where features came from.

    ``smoke`` says what made the run a smoke run (e.g. "at most 10 images per class per split"); the table then
    opens with a line saying its scores are not benchmark numbers.
    """
    head = ["dataset", "model", "tap", "dims", "probe", "metric", "score", "top-5", "C", "train", "test", "features"]
    lines = ([f"**Smoke run** ({smoke}): not a benchmark number.", ""] if smoke else []) + [
             "| " + " | ".join(head) + " |",
             "|" + "|".join("---:" if h in ("dims", "score", "top-5", "C", "train", "test") else "---"
                            for h in head) + "|"]
    r: Any  # a row's fields are the frame's columns, whose types pandas-stubs cannot know
    for r in frame.itertuples():
        c = "-" if pd.isna(r.best_C) else f"{r.best_C:.3g}"
        top5 = f"{r.top5:.1%}" if r.classes > 5 else "-"  # 100 % by definition with 5 classes or fewer
        source = f"extracted ({r.extract_seconds:.1f} s)" if r.extracted else "cached"
        lines.append(f"| {r.dataset} | {r.model} | {r.tap} | {r.dims:,} | {r.probe} | {r.metric} | {r.score:.1%} | "
                     f"{top5} | {c} | {r.n_train:,} | {r.n_test:,} | {source} |")
    return "\n".join(lines) + "\n"


def plot(frame: pd.DataFrame, taps: list[str], path: Path, smoke: str = "") -> Path:
    """One panel per dataset: the score of each model at each tap, taps in the order asked (shallow to deep)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(frame["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(4.5, 1.1 * len(taps) + 2) * len(datasets), 4),
                             squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        part = frame[frame["dataset"] == dataset]
        for model in dict.fromkeys(part["model"]):
            sub = part[part["model"] == model]
            x = [taps.index(t) for t in sub["tap"]]
            ax.plot(x, 100 * sub["score"], marker="o", label=model)
        ax.set_xticks(range(len(taps)), taps, rotation=30, ha="right")
        ax.set_title(f"{dataset} ({part['metric'].iloc[0].replace('_', ' ')}, {part['probe'].iloc[0]} probe)")
        ax.set_ylabel("test score (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Which layer transfers best" + (f" (smoke run: {smoke}; not a benchmark number)" if smoke else ""))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    write_bytes(path, buf.getvalue())
    return path


def write_results(rows, taps: list[str], output: Path, smoke: str = "") -> dict[str, Path]:
    """results.csv, results.md and accuracy.png under ``output``; returns their paths."""
    output = Path(output)
    frame = to_frame(rows)
    paths = {"csv": output / "results.csv", "markdown": output / "results.md", "plot": output / "accuracy.png"}
    write_bytes(paths["csv"], frame.to_csv(index=False).encode())
    write_bytes(paths["markdown"], to_markdown(frame, smoke).encode())
    plot(frame, taps, paths["plot"], smoke)
    return paths
