"""Runs at a glance (``cnntrain runs [DIR]``), repeated seeds (``fit --seeds 0,1,2``),
and the files a run folder is read from.

A run folder is one that holds ``recipe.toml`` (written by ``fit`` before the first
step). Its row comes from files only, never from loading a checkpoint:

- recipe, model, planned length and the paper's error from ``recipe.toml``; the data
  the run read (its kind and class count, which each ``metrics.jsonl`` record holds
  under ``data``) from the records: the paper's error is shown only where that data is
  the recipe's own, else a note says why not, and top-K is clipped to its classes;
- epochs done, best validation top-1 (and the top-K of that epoch) and wall time (the
  sum of ``epoch_time_s``) from ``metrics.jsonl``, where a resumed run's records are
  one history (a re-written epoch keeps its last record);
- the state: ``running`` while ``fit`` holds the folder (``runstate.running_marker``, a
  ``.running`` file naming a live process on this host), ``finished`` when every planned
  epoch is logged, else ``interrupted``.

Folders named ``seed<N>`` under one parent, of one recipe, are a seed group: ``runs``
shows their mean ± sample standard deviation (n - 1), the spread a real difference
between two recipes has to exceed.
"""
from __future__ import annotations

import json
import math
import os
import re
import socket
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cnntrain.engine.paperline import accuracy_ks, data_note
from cnntrain.engine.runstate import MARKER
from cnntrain.errors import CnnTrainError
from cnntrain.plots import curves_chart
from cnntrain.recipe import Recipe, load_recipe

_SEED_DIR = re.compile(r"seed(\d+)")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The run's per-epoch records in epoch order, one per epoch (a resumed run that
    logged an epoch twice keeps the later record)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            by_epoch[int(record["epoch"])] = record
        except (ValueError, KeyError, TypeError):
            raise CnnTrainError(f"{path}:{number} is not a metrics record (JSON with an 'epoch'); "
                                "fix or remove that line") from None
    return [by_epoch[e] for e in sorted(by_epoch)]


def _is_running(run_dir: Path) -> bool:
    marker = run_dir / MARKER
    try:
        holder = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process: trust the marker
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False  # killed without cleaning up (SIGKILL, power loss)
    except (PermissionError, KeyError, ValueError):
        return True
    return True


@dataclass
class RunRow:
    run: str
    recipe: str
    model: str
    dataset: str
    epochs_done: int
    epochs_planned: int | None
    best_top1: float | None
    best_topk: float | None
    topk: int
    paper: dict[str, float]
    wall_s: float
    state: str
    paper_note: str | None = None  # why the paper's numbers are left out (the run's data is not the recipe's)


def _planned_epochs(recipe: Recipe, records: list[dict[str, Any]]) -> int | None:
    """train.epochs, or the epochs train.iterations makes at the logged steps per epoch."""
    limits = [recipe.train.epochs] if recipe.train.epochs else []
    if recipe.train.iterations and records and records[0].get("step"):
        per_epoch = records[0]["step"] / records[0]["epoch"]
        limits.append(math.ceil(recipe.train.iterations / per_epoch))
    return min(limits) if limits else None


def _data_view(recipe: Recipe, records: list[dict[str, Any]]) -> tuple[str, int, dict[str, float], str | None]:
    """(the data the run read, the top-K it measured, the paper's numbers, why they are
    left out) from the data its records name; a run logged before they named it keeps the
    recipe's dataset, K and numbers."""
    data = next((r["data"] for r in reversed(records) if isinstance(r.get("data"), dict)), None)
    if data is None:
        return recipe.data.dataset, recipe.eval.topk, dict(recipe.paper.reported), None
    kind, classes = str(data["kind"]), int(data["classes"])
    (*_, k), _ = accuracy_ks(recipe.eval.topk, classes)
    note = data_note(recipe, kind, classes) if recipe.paper.reported else None
    return kind, k, ({} if note else dict(recipe.paper.reported)), note


def read_run(run_dir: Path, root: Path) -> RunRow:
    recipe = load_recipe(str(run_dir / "recipe.toml"))
    records = read_metrics(run_dir)
    dataset, k, paper, paper_note = _data_view(recipe, records)
    planned = _planned_epochs(recipe, records)
    done = records[-1]["epoch"] if records else 0
    validated = [r for r in records if isinstance(r.get("val_top1"), (int, float))]
    best = max(validated, key=lambda r: r["val_top1"], default=None)
    if _is_running(run_dir):
        state = "running"
    else:
        state = "finished" if planned is not None and done >= planned else "interrupted"
    name = str(run_dir.relative_to(root)) if run_dir != root else run_dir.name
    return RunRow(name, recipe.name, recipe.model.arch, dataset, done, planned,
                  best["val_top1"] if best else None, best.get(f"val_top{k}") if best else None, k,
                  paper, sum(float(r.get("epoch_time_s", 0.0)) for r in records), state, paper_note)


def find_runs(root: Path) -> list[RunRow]:
    if not root.is_dir():
        raise CnnTrainError(f"{root} is not a folder; give the folder your runs are in (default runs/)")
    dirs = sorted({p.parent for p in root.rglob("recipe.toml")})
    return [read_run(d, root) for d in dirs]


def seed_groups(rows: list[RunRow]) -> list[dict[str, Any]]:
    """Runs in ``PARENT/seed<N>`` folders of one recipe, with mean and sample standard
    deviation of their best top-1 and top-K."""
    groups: dict[tuple[str, str], list[RunRow]] = {}
    for row in rows:
        path = Path(row.run)
        if _SEED_DIR.fullmatch(path.name):
            groups.setdefault((str(path.parent), row.recipe), []).append(row)
    out = []
    for (parent, recipe), members in sorted(groups.items()):
        entry: dict[str, Any] = {"group": parent, "recipe": recipe, "runs": len(members),
                                 "seeds": [int(_SEED_DIR.fullmatch(Path(m.run).name).group(1)) for m in members],
                                 "topk": members[0].topk}
        for key in ("best_top1", "best_topk"):
            values = [getattr(m, key) for m in members if getattr(m, key) is not None]
            entry[f"{key}_mean"] = statistics.fmean(values) if values else None
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        out.append(entry)
    return out


def runs_table(root: Path) -> dict[str, Any]:
    rows = find_runs(root)
    return {"root": str(root), "runs": [asdict(r) for r in rows], "seed_groups": seed_groups(rows)}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _wall(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    h, m = divmod(minutes, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def format_runs(table: dict[str, Any]) -> str:
    """The text ``cnntrain runs`` prints: one row per run, then the seed groups."""
    rows = table["runs"]
    if not rows:
        return f"no runs under {table['root']} (a run folder holds recipe.toml, written by `cnntrain fit`)"
    head = ("run", "recipe", "model", "dataset", "epochs", "best top1", "top-K", "paper error", "wall", "state")
    body = []
    for r in rows:
        paper = ", ".join(f"{k.replace('_err', '')} {v:g}%" for k, v in r["paper"].items()) or (
            "left out (other data)" if r.get("paper_note") else "-")
        body.append((r["run"], r["recipe"], r["model"], r["dataset"],
                     f"{r['epochs_done']}/{r['epochs_planned'] if r['epochs_planned'] is not None else '?'}",
                     _pct(r["best_top1"]), f"top{r['topk']} {_pct(r['best_topk'])}" if r["topk"] != 1 else "-", paper, _wall(r["wall_s"]),
                     r["state"]))
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(x, widths)).rstrip() for x in [head, *body]]
    lines += [f"{r['run']}: {r['paper_note']}" for r in rows if r.get("paper_note")]
    for g in table["seed_groups"]:
        def spread(key: str) -> str:
            mean, std = g[f"{key}_mean"], g[f"{key}_std"]
            return "-" if mean is None else f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
        lines.append(f"seeds of {g['recipe']} in {g['group']} (n={g['runs']}: {','.join(map(str, g['seeds']))}): "
                     f"best top1 {spread('best_top1')}%"
                     + (f", top{g['topk']} {spread('best_topk')}%" if g["topk"] != 1 else "") + " (mean ± sample std)")
    return "\n".join(lines)


PLOT_METRICS = ("loss", "top1", "top5", "lr")


def parse_metrics(text: str) -> list[str]:
    """``--metrics loss,top1,lr``; any ``topK`` is accepted."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in ("loss", "lr") and not re.fullmatch(r"top\d+", n)]
    if not names or bad:
        raise CnnTrainError(f"--metrics {text!r}: choose from loss, lr and topK (top1, top5 ...), "
                            "e.g. loss,top1,lr")
    return names


def run_labels(paths: list[Path]) -> list[str]:
    """Each run's shortest trailing path that no other given run ends with: ``--seeds``
    runs of two recipes are all ``seed0``..., so ``a/seed0`` and ``b/seed0`` tell them apart."""
    parts = [Path(p).resolve().parts for p in paths]

    def label(i: int) -> str:
        mine = parts[i]
        for k in range(1, len(mine) + 1):
            if all(other[-k:] != mine[-k:] for j, other in enumerate(parts) if j != i):
                return str(Path(*mine[-k:]))
        return str(Path(*mine))  # the same folder given twice: its full path

    return [label(i) for i in range(len(parts))]


def plot_runs(runs: list[str], out: str, metrics: list[str]) -> str:
    """Draw the curves of every run folder in ``runs`` into ``out``; returns a summary line."""
    series = []
    for run in runs:
        path = Path(run)
        records = read_metrics(path)
        if not records:
            raise CnnTrainError(f"{path / 'metrics.jsonl'} is missing or empty; give run folders that "
                                "`cnntrain fit --out` wrote after at least one epoch")
        series.append((path, records))
    series = list(zip(run_labels([p for p, _ in series]), [r for _, r in series]))
    for metric in metrics:
        keys = (metric, f"train_{metric}", f"val_{metric}")
        if not any(k in r for _, records in series for r in records for k in keys):
            raise CnnTrainError(f"--metrics {metric}: no run logs it (its metrics.jsonl has no "
                                f"train_{metric} or val_{metric}); e.g. loss,top1,lr")
    curves_chart(series, metrics, out)
    return f"wrote {out}: {', '.join(metrics)} of {len(series)} run(s)"
