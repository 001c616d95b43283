"""The evaluation report (``eval --report DIR``, ``ensemble --report DIR``): what a model
gets wrong and whether its confidence can be trusted, from one :class:`Scores`.

Files written in DIR:

- ``per_class.csv``: per true class, its images, top-1 and top-K accuracy (%), the class
  it is most often mistaken for and how often (images, and % of the class);
- ``confusion.png``: the row-normalised confusion matrix (rows: true class) for up to
  :data:`MAX_MATRIX` classes; above that ``confused_pairs.png``, the
  :data:`TOP_PAIRS` most frequent (true -> predicted) pairs as bars;
- ``calibration.png``: the reliability diagram;
- ``mistakes.md``: for folder datasets, the most confidently wrong images with their
  paths, true and predicted class and probability;
- ``report.md``: the headline numbers, these pictures, the run's curves and its recipe.

Calibration (Guo et al. 2017, "On Calibration of Modern Neural Networks", §2): with the
confidence of an image its top-1 probability, the **ECE** is
``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|`` over :data:`BINS` equal-width bins
(b-1)/M < conf <= b/M (15, as the authors' reference implementation,
gpleiss/temperature_scaling, ``_ECELoss(n_bins=15)``; Naeini et al. 2015); **NLL**
is the mean ``-log p(true class)``; **Brier** the mean over images of
``sum_c (p_c - [c = true])^2`` (Brier 1950, summed over classes, so it lies in [0, 2]).
All three are reported as fractions (ECE also as a percentage in the picture).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import numpy as np

from torch.utils.data import Dataset

from cnntrain import plots
from cnntrain.engine.options import EnsembleOptions
from cnntrain.engine.outputs import Collector, Scores, combine, load_scores, sample_ids
from cnntrain.engine.paperline import accuracy_ks, accuracy_text
from cnntrain.output import output_folder
from cnntrain.recipe import Recipe
from cnntrain.runs import read_metrics

BINS = 15
MAX_MATRIX = 50
TOP_PAIRS = 30
MISTAKES = 25
_INDEX_ID = re.compile(r"val\[\d+\]")


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n: int) -> np.ndarray:
    """(n, n) counts: row = true class, column = predicted class."""
    return np.bincount(labels * n + preds, minlength=n * n).reshape(n, n)


def top1_predictions(scores: Scores) -> np.ndarray:
    return scores.probs.argmax(1) if len(scores.labels) else np.zeros(0, np.int64)


def per_class(scores: Scores, k: int) -> list[dict[str, Any]]:
    """One row per class (see the module docstring)."""
    n = len(scores.classes)
    matrix = confusion_matrix(scores.labels, top1_predictions(scores), n)
    kk = min(k, n)
    topk = np.argsort(-scores.probs, axis=1, kind="stable")[:, :kk]
    in_topk = (topk == scores.labels[:, None]).any(1)
    rows = []
    for c, name in enumerate(scores.classes):
        count = int(matrix[c].sum())
        off = matrix[c].copy()
        off[c] = 0
        worst = int(off.argmax())
        mistaken = int(off[worst])
        rows.append({
            "class": name, "samples": count,
            "top1": 100.0 * matrix[c, c] / count if count else float("nan"),
            f"top{k}": 100.0 * in_topk[scores.labels == c].sum() / count if count else float("nan"),
            "mistaken_for": scores.classes[worst] if mistaken else "",
            "mistaken_count": mistaken,
            "mistaken_pct": 100.0 * mistaken / count if count else 0.0,
        })
    return rows


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """ECE, NLL and Brier score, and the per-bin accuracy, confidence and count."""
    n = len(labels)
    conf = probs.max(1).astype(np.float64)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin b holds edges[b] < conf <= edges[b+1]; a confidence of exactly 0 joins the first
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    acc = np.bincount(which, weights=correct, minlength=bins) / np.maximum(count, 1)
    mean_conf = np.bincount(which, weights=conf, minlength=bins) / np.maximum(count, 1)
    ece = float(np.sum(count / max(n, 1) * np.abs(acc - mean_conf)))
    p_true = probs[np.arange(n), labels].astype(np.float64)
    nll = float(-np.log(np.clip(p_true, 1e-12, None)).mean()) if n else 0.0
    onehot = np.eye(probs.shape[1])[labels]
    brier = float(((probs - onehot) ** 2).sum(1).mean()) if n else 0.0
    return {"ece": ece, "nll": nll, "brier": brier,
            "bins": {"edges": edges, "accuracy": acc, "confidence": mean_conf, "count": count}}


def confused_pairs(matrix: np.ndarray, classes: list[str], top: int = TOP_PAIRS) -> list[tuple[str, str, int]]:
    """The ``top`` most frequent (true, predicted, images) pairs with true != predicted."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:top]
    n = len(classes)
    return [(classes[i // n], classes[i % n], int(off.flat[i])) for i in flat if off.flat[i] > 0]


def has_paths(ids: list[str]) -> bool:
    return bool(ids) and not all(_INDEX_ID.fullmatch(i) for i in ids)


def confident_mistakes(scores: Scores, top: int = MISTAKES) -> list[dict[str, Any]]:
    """The wrong top-1 predictions with the highest probability, most confident first."""
    preds = top1_predictions(scores)
    wrong = np.flatnonzero(preds != scores.labels)
    conf = scores.probs[wrong, preds[wrong]]
    order = wrong[np.argsort(-conf, kind="stable")][:top]
    return [{"id": scores.ids[i], "true": scores.classes[scores.labels[i]], "predicted": scores.classes[preds[i]],
             "probability": float(scores.probs[i, preds[i]]),
             "true_probability": float(scores.probs[i, scores.labels[i]])} for i in order]


# --------------------------------------------------------------------------- writing


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({key: f"{v:.2f}" if isinstance(v, float) else v for key, v in row.items()})


def _write_mistakes(mistakes: list[dict[str, Any]], path: Path) -> None:
    lines = ["# Most confidently wrong images", "",
             f"The {len(mistakes)} wrong top-1 predictions with the highest probability, most confident first.", "",
             "| # | image | true class | predicted | probability | p(true class) |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {i} | `{m['id']}` | {m['true']} | {m['predicted']} | {m['probability']:.3f} | "
              f"{m['true_probability']:.3f} |" for i, m in enumerate(mistakes, 1)]
    path.write_text("\n".join(lines) + "\n")


def _markdown(title: str, headline: dict[str, Any], k: int, cal: dict[str, Any], rows: list[dict[str, Any]],
              files: dict[str, str], recipe_toml: str | None) -> str:
    out = [f"# {title}", "",
           f"{headline['samples']} images: top-1 {headline['top1']:.2f}%, top-{k} {headline[f'top{k}']:.2f}%, "
           f"loss {headline['loss']:.4f}; ECE {100 * cal['ece']:.2f}%, NLL {cal['nll']:.4f}, "
           f"Brier {cal['brier']:.4f}.", ""]
    if "curves" in files:
        out += ["## Training curves", "", f"![curves]({files['curves']})", ""]
    out += ["## Confusion", "", f"![confusion]({files['confusion']})", "",
            "## Calibration", "", f"![calibration]({files['calibration']})", "",
            f"## Classes, worst top-1 first (all in [per_class.csv]({files['per_class']}))", "",
            f"| class | images | top-1 % | top-{k} % | most often mistaken for | images (% of class) |",
            "| --- | --- | --- | --- | --- | --- |"]
    worst = sorted(rows, key=lambda r: (r["top1"] if r["samples"] else 101.0, r["class"]))[:20]
    out += [f"| {r['class']} | {r['samples']} | {r['top1']:.2f} | {r[f'top{k}']:.2f} | "
            f"{r['mistaken_for'] or '-'} | {r['mistaken_count']} ({r['mistaken_pct']:.1f}%) |" for r in worst]
    if "mistakes" in files:
        out += ["", f"The most confidently wrong images, with their paths: [mistakes.md]({files['mistakes']})."]
    if recipe_toml:
        out += ["", "## Recipe", "", "```toml", recipe_toml.rstrip(), "```"]
    return "\n".join(out) + "\n"


def write_report(scores: Scores, out: str | Path, k: int, title: str, headline: dict[str, Any],
                 run_dir: Path | None = None, recipe_toml: str | None = None) -> dict[str, Any]:
    """Write every file of the report into ``out``; returns ``ece``, ``nll``, ``brier``
    and ``report`` (the folder) for the command's JSON."""
    out = output_folder(out, "report folder")
    n = len(scores.classes)
    rows = per_class(scores, k)
    files = {"per_class": "per_class.csv"}
    _write_csv(rows, out / files["per_class"])
    matrix = confusion_matrix(scores.labels, top1_predictions(scores), n)
    if n <= MAX_MATRIX:
        files["confusion"] = "confusion.png"
        plots.confusion_chart(matrix, scores.classes, out / files["confusion"], f"{title}: confusion (row-normalised)")
    else:
        files["confusion"] = "confused_pairs.png"
        plots.pairs_chart(confused_pairs(matrix, scores.classes), out / files["confusion"],
                          f"{title}: the {TOP_PAIRS} most-confused pairs of {n} classes")
    cal = calibration(scores.probs, scores.labels)
    files["calibration"] = "calibration.png"
    plots.reliability_chart(cal["bins"], cal["ece"], out / files["calibration"], title)
    if has_paths(scores.ids):
        files["mistakes"] = "mistakes.md"
        _write_mistakes(confident_mistakes(scores), out / files["mistakes"])
    records = read_metrics(run_dir) if run_dir is not None else []
    if records:
        files["curves"] = "curves.png"
        plots.curves_chart([(run_dir.name, records)], ["loss", "top1", "lr"], out / files["curves"])
    (out / "report.md").write_text(_markdown(title, headline, k, cal, rows, files, recipe_toml))
    return {"ece": cal["ece"], "nll": cal["nll"], "brier": cal["brier"], "report": str(out)}


# --------------------------------------------------------------------------- commands


def eval_outputs(sink: Collector, opts: Any, dataset: Dataset, skipped: list,
                 members: list[tuple[str, dict, Recipe]], headline: dict[str, Any], k: int) -> dict[str, Any]:
    """After ``eval`` or ``ensemble`` on checkpoints: save the outputs (``--save-logits``)
    and write the report (``--report``) of the model, or of the ensemble combined as
    ``--combine`` says. Returns what joins the command's JSON."""
    classes = list(members[0][1]["classes"])
    ids = sample_ids(dataset, {b.path for b in skipped})
    scores = [sink.member(i, ids, classes, str(path)) for i, (path, _, _) in enumerate(members)]
    out: dict[str, Any] = {}
    save = getattr(opts, "save_logits", None)
    if save:
        scores[0].save(save)
        out["saved_logits"] = str(save)
        print(f"saved outputs of {len(ids)} images to {save}")
    if opts.report:
        if len(scores) == 1:
            path, meta, recipe = members[0]
            title = f"{recipe.name}: {meta['arch']} ({Path(path).parent.name}/{Path(path).name})"
            out.update(write_report(scores[0], opts.report, k, title, headline, Path(path).parent, recipe.to_toml()))
        else:
            title = f"ensemble of {len(scores)} ({opts.combine} average)"
            out.update(write_report(combine(scores, opts.combine), opts.report, k, title, headline))
        _print_report(out)
    return out


def _print_report(out: dict[str, Any]) -> None:
    print(f"calibration  ECE {100 * out['ece']:.2f}%  NLL {out['nll']:.4f}  Brier {out['brier']:.4f}   "
          f"report: {Path(out['report']) / 'report.md'}")


def ensemble_saved(opts: EnsembleOptions) -> dict[str, Any]:
    """``cnntrain ensemble --logits A.npz B.npz ...``: each member's and the combination's
    top-1/top-K from saved outputs, with no model and no data."""
    paths, how, topk, report = opts.checkpoints, opts.combine, opts.topk or 5, opts.report
    members = [load_scores(p) for p in paths]
    ens = combine(members, how)  # refuses files that score other images, labels or classes
    ks, k_note = accuracy_ks(topk, len(ens.classes))  # each top-K once, K at most the classes
    results = []
    for path, m in zip(paths, members):
        r = {**m.metrics(ks), "file": str(path)}
        results.append(r)
        print(f"member   {path}  {accuracy_text(r, ks)}  loss {r['loss']:.4f}")
    headline = ens.metrics(ks, use_logits=how == "logit")
    print(f"ensemble of {len(paths)} ({how} average)  {accuracy_text(headline, ks)}  loss {headline['loss']:.4f}  "
          f"on {headline['samples']} images")
    if k_note:
        print(k_note)
    out = {**headline, "combine": how, "members": results}
    if report:
        out.update(write_report(ens, report, ks[-1], f"ensemble of {len(paths)} saved outputs ({how} average)",
                                headline))
        _print_report(out)
    return out
