"""Every chart cnntrain draws, through matplotlib's headless Agg backend: the
accuracy-against-operations chart of ``cnntrain compare --plot`` (after Canziani et al.
2017, Fig. 2), training curves (``cnntrain plot``), and the confusion matrix and
reliability diagram of ``cnntrain eval --report``.

Each function takes plain numbers (no models, no data) and writes one PNG; the figure
is closed afterwards, so a long session drawing many charts holds no memory for them.
Labels of scattered points are placed by :func:`place_labels`, which tries offsets in
rings around each point and keeps the first whose box overlaps no other label, no
marker and no axis edge; far offsets get a leader line back to their point.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on a GPU server or in CI

import matplotlib.legend  # noqa: E402 - after the backend is chosen
import matplotlib.lines  # noqa: E402
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from cnntrain.output import output_file  # noqa: E402

DPI = 100
COLORS = plt.get_cmap("tab10").colors


def _save(fig: plt.Figure, path: str | Path) -> None:
    try:  # a refused path must not leave the figure open (matplotlib keeps every one)
        fig.savefig(output_file(path, "chart"), dpi=DPI, format="png")
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- labels


@dataclass
class Point:
    x: float
    y: float
    label: str
    size: float  # marker area, points^2 (matplotlib's scatter ``s``)


def _overlaps(box: Bbox, others: list[Bbox]) -> float:
    """Total area ``box`` shares with ``others`` (pixels^2)."""
    area = 0.0
    for o in others:
        w = min(box.x1, o.x1) - max(box.x0, o.x0)
        h = min(box.y1, o.y1) - max(box.y0, o.y0)
        if w > 0 and h > 0:
            area += w * h
    return area


def place_labels(ax: plt.Axes, points: list[Point], fontsize: float = 8) -> list[Bbox]:
    """Label every point where its text overlaps nothing already drawn (labels, markers,
    legends, the axes' edge), searching outward in rings of 12 directions; returns the label boxes
    in display pixels. A label that found no free spot takes the least-crowded one."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    scale = fig.dpi / 72  # points -> pixels
    frame = ax.get_window_extent(renderer)
    markers = [legend.get_window_extent(renderer) for legend in ax.findobj(matplotlib.legend.Legend)]
    for p in points:
        cx, cy = to_px((p.x, p.y))
        r = math.sqrt(p.size) / 2 * scale + 1
        markers.append(Bbox.from_extents(cx - r, cy - r, cx + r, cy + r))
    placed: list[Bbox] = []
    for p in sorted(points, key=lambda p: -p.size):
        cx, cy = to_px((p.x, p.y))
        probe = ax.text(0, 0, p.label, fontsize=fontsize, transform=None)
        ext = probe.get_window_extent(renderer)
        probe.remove()
        w, h = ext.width + 2, ext.height + 2
        r0 = math.sqrt(p.size) / 2 * scale + 3
        best: tuple[float, Bbox, float, float] | None = None
        for ring in range(8):
            radius = r0 + ring * 9 * scale
            for step in range(12):
                angle = math.radians(step * 30)
                dx, dy = radius * math.cos(angle), radius * math.sin(angle)
                # anchor the box on the side that faces the point
                x0 = cx + dx - (w if dx < -1e-6 else 0 if dx > 1e-6 else w / 2)
                y0 = cy + dy - (h if dy < -1e-6 else 0 if dy > 1e-6 else h / 2)
                box = Bbox.from_bounds(x0, y0, w, h)
                outside = not (frame.x0 + 2 <= box.x0 and box.x1 <= frame.x1 - 2
                               and frame.y0 + 2 <= box.y0 and box.y1 <= frame.y1 - 2)
                cost = _overlaps(box, placed) + _overlaps(box, markers) \
                    + (1e6 if outside else 0)
                if best is None or cost < best[0]:
                    best = (cost, box, dx, dy)
                if cost == 0:
                    break
            if best is not None and best[0] == 0:
                break
        assert best is not None
        _, box, dx, dy = best
        placed.append(box)
        far = math.hypot(dx, dy) > r0 + 1
        ax.annotate(p.label, (p.x, p.y), xytext=(box.x0 / scale, box.y0 / scale), textcoords="figure points",
                    fontsize=fontsize, ha="left", va="bottom", annotation_clip=False,
                    arrowprops=dict(arrowstyle="-", color="0.55", lw=0.6, shrinkA=0, shrinkB=2) if far else None)
    return placed


# --------------------------------------------------------------------------- compare


def _size_legend(ax: plt.Axes, per_million: float, params: list[int]) -> None:
    """Grey circles of round parameter counts, the scale of every marker."""
    top = max(params) / 1e6
    steps = [v for v in (1, 5, 10, 25, 50, 100, 150) if v <= top * 1.2][-3:] or [round(top)]
    handles = [ax.scatter([], [], s=v * per_million, color="0.8", edgecolors="0.4") for v in steps]
    legend = ax.legend(handles, [f"{v}M params" for v in steps], loc="upper right", fontsize=8,
                       labelspacing=1.6, borderpad=1.0, title="marker area", title_fontsize=8, framealpha=0.9)
    ax.add_artist(legend)


def compare_chart(panels: list[tuple[str, list[dict[str, Any]]]], path: str | Path, note: str = "") -> list[list[Bbox]]:
    """One panel per accuracy metric: each entry of ``panels`` is (metric title, rows with
    ``model``, ``macs``, ``params``, ``err``). Error against G-MACs (log scale), marker
    area proportional to parameters. Returns each panel's label boxes (pixels)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(7.2 * len(panels), 6.4), dpi=DPI,
                             squeeze=False)
    pmax = max(r["params"] for _, rows in panels for r in rows)
    per_million = 900 / (pmax / 1e6)  # the largest model gets 900 points^2
    panel_points = []
    for ax, (metric, rows) in zip(axes[0], panels):
        xs = [r["macs"] / 1e9 for r in rows]
        ys = [r["err"] for r in rows]
        sizes = [max(12.0, r["params"] / 1e6 * per_million) for r in rows]
        ax.scatter(xs, ys, s=sizes, c=[COLORS[i % 10] for i in range(len(rows))], alpha=0.45,
                   edgecolors="0.25", linewidths=0.6, zorder=3)
        ax.set_xscale("log")
        lo, hi = min(xs), max(xs)
        ax.set_xlim(lo / 2.2, hi * 2.2)
        span = max(ys) - min(ys) or 1.0
        ax.set_ylim(min(ys) - 0.22 * span, max(ys) + 0.22 * span)
        ax.set_xlabel("multiply-accumulates per image (G-MACs, log scale)")
        ax.set_ylabel(f"{metric} (%), lower is better")
        ax.set_title(f"{metric} reported by the paper", fontsize=11)
        ax.grid(True, which="both", color="0.92", zorder=0)
        _size_legend(ax, per_million, [r["params"] for r in rows])
        panel_points.append([Point(x, y, r["model"], s) for x, y, r, s in zip(xs, ys, rows, sizes)])
    # Labels are placed in figure points, so only after the one final layout.
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    fig.canvas.draw()
    boxes = [place_labels(ax, points) for ax, points in zip(axes[0], panel_points)]
    if note:
        fig.text(0.01, 0.01, note, fontsize=8, color="0.35")
    _save(fig, path)
    return boxes


# --------------------------------------------------------------------------- curves


def curves_chart(runs: list[tuple[str, list[dict[str, Any]]]], metrics: list[str], path: str | Path) -> None:
    """One panel per metric over epochs, every run overlaid in its own colour: training
    values dashed, validation solid; ``lr`` on its own (log) panel."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.9), dpi=DPI, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        keys = [("lr", "-")] if metric == "lr" else [(f"train_{metric}", "--"), (f"val_{metric}", "-")]
        for i, (_, records) in enumerate(runs):
            for key, style in keys:
                pts = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
                if pts:
                    ax.plot(*zip(*pts), style, color=COLORS[i % 10], lw=1.5, ms=3,
                            marker="o" if len(pts) < 12 else None)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        k = metric[3:]
        ax.set_title({"lr": "learning rate", "loss": "loss"}.get(metric, f"top-{k} accuracy (%)"), fontsize=11)
        if metric == "lr":
            ax.set_yscale("log")
        ax.grid(True, color="0.92")
    handles = [matplotlib.lines.Line2D([], [], color=COLORS[i % 10], lw=2) for i in range(len(runs))]
    handles += [matplotlib.lines.Line2D([], [], color="0.3", ls=ls) for ls in ("--", "-")]
    fig.legend(handles, [name for name, _ in runs] + ["train", "validation"], loc="lower center",
               ncol=min(8, len(handles)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    _save(fig, path)


# --------------------------------------------------------------------------- evaluation


def confusion_chart(matrix: np.ndarray, classes: list[str], path: str | Path, title: str) -> None:
    """The row-normalised confusion matrix (each true class sums to 1)."""
    n = len(classes)
    rows = matrix.sum(1, keepdims=True)
    norm = matrix / np.maximum(rows, 1)
    side = min(12.0, 3.0 + 0.22 * n)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=DPI)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=90 if n > 12 else 0, fontsize=max(5, 10 - n // 8))
    ax.set_yticks(range(n), classes, fontsize=max(5, 10 - n // 8))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 15:  # a number in every cell while they stay readable
        for t in range(n):
            for p in range(n):
                if matrix[t, p]:
                    ax.text(p, t, f"{norm[t, p]:.2f}".lstrip("0") if norm[t, p] < 1 else "1", ha="center",
                            va="center", fontsize=7, color="white" if norm[t, p] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def pairs_chart(pairs: list[tuple[str, str, int]], path: str | Path, title: str) -> None:
    """The most-confused (true -> predicted) pairs as horizontal bars, largest on top."""
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(pairs) + 1.4), dpi=DPI)
    labels = [f"{t} -> {p}" for t, p, _ in pairs][::-1]
    ax.barh(range(len(pairs)), [c for *_, c in pairs][::-1], color=COLORS[0])
    ax.set_yticks(range(len(pairs)), labels, fontsize=8)
    ax.set_xlabel("images (true -> predicted)")
    ax.set_title(title, fontsize=11)
    ax.grid(True, axis="x", color="0.92")
    fig.tight_layout()
    _save(fig, path)


def reliability_chart(bins: dict[str, np.ndarray], ece: float, path: str | Path, title: str) -> None:
    """Reliability diagram (accuracy per confidence bin against the diagonal, the gap
    shaded) over a histogram of how many images fall in each bin (Guo et al. 2017, Fig. 1)."""
    edges, acc, conf, count = bins["edges"], bins["accuracy"], bins["confidence"], bins["count"]
    width = np.diff(edges)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.2, 6.2), dpi=DPI, sharex=True,
                                         height_ratios=(3, 1))
    has = count > 0
    top.bar(edges[:-1][has], acc[has], width=width[has], align="edge", color=COLORS[0], edgecolor="0.2",
            lw=0.6, label="accuracy")
    # the gap from accuracy to mean confidence, hatched over the bar (above it: over-confident)
    top.bar(edges[:-1][has], (conf - acc)[has], bottom=acc[has], width=width[has], align="edge",
            facecolor="none", edgecolor=COLORS[3], hatch="///", lw=0.8, label="gap to mean confidence")
    top.plot([0, 1], [0, 1], "--", color="0.4", lw=1, label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    # above the axes: the bars may fill any corner
    top.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=7, frameon=False)
    fig.suptitle(f"{title}\nECE {100 * ece:.2f}% over {len(count)} equal-width bins", fontsize=10)
    bottom.bar(edges[:-1], count, width=width, align="edge", color="0.6", edgecolor="0.3", lw=0.6)
    bottom.set_xlabel("confidence (top-1 probability)")
    bottom.set_ylabel("images")
    fig.tight_layout()
    _save(fig, path)
