"""The command line: parses arguments into an options dataclass, then calls one engine
function per command.

User errors (:class:`CnnTrainError`) print one line on stderr and exit with code 2;
``--debug`` shows their traceback too.

The engine modules are imported inside the commands that run them, not here: they pull
in TensorBoard, torch's elastic launcher, torchvision's datasets and matplotlib, which
``cnntrain --help``, ``recipes`` or ``models`` have no use for. (torch itself is imported
by the package for the model registry.)
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import torch
import typer

from cnntrain.errors import CnnTrainError
from cnntrain.engine.options import (BenchDataOptions, BenchDecodeOptions, BenchTrainOptions, EnsembleOptions,
                                     EvalOptions, FitOptions, parse_scales, parse_seeds)
from cnntrain.models import aux_head_params, build_model, inference_params, list_models, model_info
from cnntrain.output import output_folder, write_json
from cnntrain.recipe import load_recipe, recipe_names

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, evaluate and ensemble the classic CNNs the way their papers did.")
_state = {"debug": False}  # the one place --debug is read (set by the root callback)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for user errors.")) -> None:
    _state["debug"] = debug


@app.command()
def fit(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe name (see `cnntrain recipes`) or .toml path."),
    data: Optional[str] = typer.Option(None, "--data", help="CIFAR root, ImageNet-style root, 'digits' or 'synthetic'."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/RECIPE)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Train this many epochs (clears train.iterations)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Sets optim.batch_size."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Sets optim.lr."),
    set_: List[str] = typer.Option([], "--set", help="Override a recipe key: --set optim.lr=0.05 (repeatable)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    nproc: int = typer.Option(1, "--nproc", help="DDP processes on this machine (one per GPU; Gloo on CPU)."),
    strategy: str = typer.Option("ddp", "--strategy",
                                 help="ddp (DistributedDataParallel) or dp (DataParallel, one process, all GPUs)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Data-loading processes (default: from the cores)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sets train.seed."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Train once per seed, e.g. 0,1,2, into OUT/seed0, "
                                        "OUT/seed1 ... (`cnntrain runs` shows their mean and spread)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="'auto' (OUT/last.pt if present) or a checkpoint path."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the tqdm bar."),
    init: Optional[str] = typer.Option(None, "--init", help="Start from weights: a .pth/.pt/.safetensors file, a "
                                       "checkpoint, or torchvision:WEIGHTS (sets model.init)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Move a run already in --out aside (never deleted)."),
    resume_force: bool = typer.Option(False, "--resume-force",
                                      help="Resume although the recipe differs in keys that change the result."),
    max_restarts: int = typer.Option(0, "--max-restarts",
                                     help="With --nproc N: restart the group up to R times after a failure."),
) -> None:
    """Train a recipe; writes recipe.toml, last.pt, best.pt, metrics.jsonl and TensorBoard logs.

    Several GPUs: --nproc N on one machine, or torchrun on several
    (torchrun --nnodes M --nproc-per-node N ... -m cnntrain fit ...).
    optim.batch_size is the global batch, split across the processes."""
    from cnntrain.engine.distributed import DistEnv, per_process_batch
    from cnntrain.engine.launch import check_launch, launch
    from cnntrain.engine.runfolder import claim
    from cnntrain.engine.train import fit as run_fit

    check_launch(nproc, device, strategy, max_restarts)

    overrides = list(set_)
    if batch_size is not None:
        overrides.append(f"optim.batch_size={batch_size}")
    if lr is not None:
        overrides.append(f"optim.lr={lr}")
    if seed is not None:
        overrides.append(f"train.seed={seed}")
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    if init is not None:
        overrides.append(f"model.init={json.dumps(init)}")  # a TOML string, whatever the path holds
    if seeds is not None and seed is not None:
        raise CnnTrainError("--seed and --seeds: give one of them")
    for one_seed in parse_seeds(seeds) if seeds is not None else [None]:
        extra = [] if one_seed is None else [f"train.seed={one_seed}"]
        r = load_recipe(recipe, overrides + extra)
        if epochs is not None:
            r.train.iterations = None
        run_out = out or Path("runs") / r.name
        opts = FitOptions(out=run_out if one_seed is None else run_out / f"seed{one_seed}", data=data,
                          device=device, workers=workers, resume=resume, progress=progress, strategy=strategy,
                          overwrite=overwrite, resume_force=resume_force)
        if nproc > 1:
            per_process_batch(r.optim.batch_size, DistEnv(world=nproc), r.train.accumulate)
            claim(opts.out, opts.resume, opts.overwrite).release()  # refuse a used folder once, before any process starts
            launch(run_fit, (r, opts), nproc, debug=_state["debug"], max_restarts=max_restarts)
        else:
            run_fit(r, opts)


@app.command("eval")
def eval_(
    checkpoint: Optional[str] = typer.Argument(None, help="A best.pt or last.pt."),
    data: Optional[str] = typer.Option(None, "--data", help="Default: the data the checkpoint was trained on."),
    split: str = typer.Option("val", "--split", help="val or train."),
    topk: Optional[int] = typer.Option(None, "--topk", help="Also report top-K accuracy (default: the recipe's)."),
    crops: Optional[int] = typer.Option(None, "--crops", help="1 (centre) or 10 (corners, centre and flips)."),
    scales: Optional[str] = typer.Option(None, "--scales", help="Test scales, e.g. 256,384,512: the crops at "
                                         "each shorter side, softmax averaged (default: the recipe's eval.scales)."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write top1, topK, loss, samples to this file."),
    device: str = typer.Option("auto", "--device"),
    workers: Optional[int] = typer.Option(None, "--workers"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    nproc: int = typer.Option(1, "--nproc", help="Evaluate a shard in each of N processes (one per GPU)."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="A paper's test protocol, e.g. 10crop, "
                                           "vgg-dense, googlenet-144; 'list' shows them all."),
    report: Optional[str] = typer.Option(None, "--report", help="Write per_class.csv, confusion.png, "
                                         "calibration.png, mistakes.md and report.md into this folder."),
    save_logits: Optional[str] = typer.Option(None, "--save-logits", help="Save logits, labels, sample ids and "
                                              "class names to FILE.npz (for ensemble --logits)."),
) -> None:
    """Top-1 and top-K accuracy, loss and sample count of a checkpoint."""
    from cnntrain.engine.distributed import env_from_environ, teardown
    from cnntrain.engine.evaluate import eval_checkpoint
    from cnntrain.engine.launch import check_launch, launch
    from cnntrain.data.protocols import describe_protocols
    from cnntrain.engine.protocols import eval_protocol

    if protocol == "list":
        typer.echo(describe_protocols())
        return
    if checkpoint is None:
        raise CnnTrainError("eval needs a checkpoint: cnntrain eval runs/x/best.pt (or --protocol list)")
    opts = EvalOptions(checkpoint=checkpoint, data=data, split=split, topk=topk, crops=crops,
                       scales=parse_scales(scales), device=device, workers=workers, batch_size=batch_size,
                       nproc=nproc, protocol=protocol, report=report, save_logits=save_logits)
    check_launch(nproc, device, "ddp")
    run = eval_protocol if protocol else eval_checkpoint
    if nproc > 1:
        result = launch(run, (opts,), nproc, debug=_state["debug"])
    else:
        result = run(opts)
        teardown()
    if env_from_environ().is_main:
        write_json(result, json_out)


@app.command()
def ensemble(
    checkpoints: List[str] = typer.Argument(..., help="Two or more checkpoints (with --logits: .npz files)."),
    data: Optional[str] = typer.Option(None, "--data"),
    topk: int = typer.Option(5, "--topk"),
    combine: str = typer.Option("prob", "--combine", help="prob (average softmax) or logit."),
    crops: int = typer.Option(1, "--crops", help="1 or 10."),
    json_out: Optional[str] = typer.Option(None, "--json"),
    device: str = typer.Option("auto", "--device"),
    workers: Optional[int] = typer.Option(None, "--workers"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    logits: bool = typer.Option(False, "--logits", help="The arguments are outputs saved by eval --save-logits: "
                                "combine them without models or data."),
    report: Optional[str] = typer.Option(None, "--report", help="Write the ensemble's report into this folder."),
) -> None:
    """Each member's and the ensemble's top-1/top-K, reading the data once (or none, with --logits)."""
    from cnntrain.engine.evaluate import ensemble_checkpoints
    from cnntrain.engine.report import ensemble_saved

    opts = EnsembleOptions(checkpoints=list(checkpoints), data=data, topk=topk, combine=combine, crops=crops,
                           device=device, workers=workers, batch_size=batch_size, report=report, saved=logits)
    write_json(ensemble_saved(opts) if logits else ensemble_checkpoints(opts), json_out)


@app.command()
def recipes(
    name: Optional[str] = typer.Argument(None, help="Show this recipe fully resolved."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the paper recipes, or show one resolved."""

    if name:
        r = load_recipe(name)
        typer.echo(json.dumps(r.to_dict(), indent=2) if as_json else r.to_toml().rstrip())
        return
    rows = []
    for n in recipe_names():
        r = load_recipe(n)
        length = f"{r.train.epochs} ep" if r.train.epochs else f"{r.train.iterations} it"
        rows.append({"name": n, "arch": r.model.arch, "dataset": r.data.dataset, "length": length,
                     "epochs": r.train.epochs, "iterations": r.train.iterations,
                     "reported": dict(r.paper.reported), "verified": r.paper.verified,
                     "protocol": r.paper.protocol, "cite": r.paper.cite})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    wn = max(len(r["name"]) for r in rows) + 2
    wa = max(len(r["arch"]) for r in rows) + 2
    typer.echo(f"{'recipe':<{wn}}{'model':<{wa}}{'dataset':<11}{'length':<10}paper's reported error")
    for row in rows:
        err = ", ".join(f"{k} {v:g}%" for k, v in row["reported"].items()) or "-"
        if row["reported"] and not row["verified"]:
            err += " (unverified)"
        typer.echo(f"{row['name']:<{wn}}{row['arch']:<{wa}}{row['dataset']:<11}{row['length']:<10}{err}")


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List the architectures with their paper and parameter count."""
    rows = []
    for name in list_models():
        info = model_info(name)
        classes = info.default_classes
        with torch.device("meta"):
            model = build_model(name, num_classes=classes)
        rows.append({"name": name, "family": info.family, "year": info.year, "input": info.input_size,
                     "classes": classes, "params": inference_params(model), "aux_params": aux_head_params(model),
                     "paper": info.paper})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows) + 2
    count = [f"{r['params']:,}" + (f" (+{r['aux_params']:,} aux heads)" if r["aux_params"] else "") for r in rows]
    wc = max(map(len, count)) + 2
    typer.echo(f"{'model':<{width}}{'year':<6}{'input':<7}{'params (inference)':>{wc}}  paper")
    for r, c in zip(rows, count):
        typer.echo(f"{r['name']:<{width}}{r['year']:<6}{r['input']:<7}{c:>{wc}}  {r['paper']}")


@app.command()
def summary(
    model: str = typer.Argument(..., help="A model (see `cnntrain models`), or inception-naive / inception-reduced."),
    input_: Optional[str] = typer.Option(None, "--input", help="CxHxW, e.g. 3x224x224 (default: the paper's size)."),
    depth: Optional[int] = typer.Option(None, "--depth", help="One row per module N levels down, not per leaf layer."),
    classes: Optional[int] = typer.Option(None, "--classes", help="Output classes (default 1000; 10 for 32-pixel models)."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write every row and total, exact, to this file."),
) -> None:
    """Per-layer output shapes, activation memory, parameters and multiply-accumulates."""
    from cnntrain.summary import default_input, parse_input, summarize_model

    channels = default_input(model)[0]
    if classes is not None and classes < 1:
        raise CnnTrainError(f"--classes must be positive, got {classes}")
    size = parse_input(input_, channels) if input_ else None
    result = summarize_model(model, size, depth, classes)
    typer.echo(result.table())
    write_json(result.to_dict(), json_out)


@app.command()
def compare(
    models_: List[str] = typer.Argument(None, metavar="[MODEL]...",
                                        help="Models to compare (default: the ImageNet models with a recipe)."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write the table's rows to this file."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Write a PNG chart of accuracy against MACs."),
) -> None:
    """The architecture comparison table: depth, kernels, FC widths, dropout/LRN/BN, params, MACs, paper error."""
    from cnntrain.compare import compare_models, plot as draw_plot, table, to_dicts

    rows = compare_models(list(models_ or []))
    typer.echo(table(rows))
    write_json({"models": to_dicts(rows)}, json_out)
    if plot:
        skipped = draw_plot(rows, plot)
        note = f" (no paper error, not plotted: {', '.join(skipped)})" if skipped else ""
        typer.echo(f"wrote {plot}{note}")


# --------------------------------------------------------------------------- looking at runs (plot, runs)


@app.command()
def plot(
    runs: List[str] = typer.Argument(..., help="Run folders (each holds the metrics.jsonl fit wrote)."),
    out: str = typer.Option("curves.png", "--out", help="The PNG to write."),
    metrics: str = typer.Option("loss,top1,lr", "--metrics", help="Panels: loss, lr, top1, top5 ... "
                                "(train dashed, val solid; one colour per run)."),
) -> None:
    """Training curves of one or several runs, overlaid."""
    from cnntrain.runs import parse_metrics, plot_runs

    typer.echo(plot_runs(list(runs), out, parse_metrics(metrics)))


@app.command()
def runs(
    folder: Path = typer.Argument(Path("runs"), help="Where the run folders are (searched recursively)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Every run under FOLDER: recipe, model, epochs, best top-1/top-K, paper error, wall time, state;
    seed0/seed1/... folders of one recipe as mean ± std."""
    from cnntrain.runs import format_runs, runs_table

    table = runs_table(folder)
    typer.echo(json.dumps(table, indent=2) if as_json else format_runs(table))


bench_app = typer.Typer(no_args_is_help=True, help="Measure cnntrain against a plain PyTorch baseline.")
app.add_typer(bench_app, name="bench")


@bench_app.command("data")
def bench_data(
    data: str = typer.Option(..., "--data", help="ImageNet-style root (see bench make-jpegs) or CIFAR-10 root "
                             "(see bench make-cifar)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Loader workers for both (default: the cores)."),
    batches: int = typer.Option(20, "--batches", help="Timed batches per round."),
    batch_size: int = typer.Option(64, "--batch-size"),
    warmup: int = typer.Option(3, "--warmup", help="Untimed batches first (worker start-up)."),
    repeats: int = typer.Option(2, "--repeats", help="Rounds, alternating baseline and cnntrain; medians reported."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Whose training augmentation to run "
                                         "(default: resnet50 on a folder, resnet20 on CIFAR)."),
    device: str = typer.Option("auto", "--device"),
    json_out: Optional[str] = typer.Option(None, "--json"),
) -> None:
    """Training-input images/s: cnntrain's pipeline vs torchvision ImageFolder + PIL transforms."""
    from cnntrain.engine.bench import bench_data as run

    opts = BenchDataOptions(root=data, recipe=recipe, workers=workers, batches=batches, batch_size=batch_size,
                            warmup=warmup, repeats=repeats, device=device)
    write_json(run(opts), json_out)


@bench_app.command("decode")
def bench_decode(
    data: str = typer.Option(..., "--data", help="ImageNet-style root of JPEGs (train/CLASS/*.jpg)."),
    count: int = typer.Option(200, "--count", help="JPEGs to time (the first of train/)."),
    repeats: int = typer.Option(3, "--repeats", help="Rounds; medians reported."),
    json_out: Optional[str] = typer.Option(None, "--json"),
) -> None:
    """Per-image milliseconds, one thread: the baseline's and cnntrain's sample, and decoding alone."""
    from cnntrain.engine.bench import bench_decode as run

    write_json(run(BenchDecodeOptions(root=data, count=count, repeats=repeats)), json_out)


@bench_app.command("train")
def bench_train(
    recipe: str = typer.Option(..., "--recipe", "-r"),
    steps: int = typer.Option(10, "--steps", help="Timed steps per round."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Default: the recipe's."),
    set_: List[str] = typer.Option([], "--set", help="Override a recipe key (e.g. train.channels_last=off)."),
    device: str = typer.Option("auto", "--device"),
    warmup: int = typer.Option(3, "--warmup"),
    repeats: int = typer.Option(3, "--repeats", help="Rounds, alternating the contenders; medians reported."),
    compile_model: bool = typer.Option(False, "--compile",
                                       help="torch.compile the model (cnntrain and the same-settings loop)."),
    json_out: Optional[str] = typer.Option(None, "--json"),
) -> None:
    """Training-step images/s: cnntrain's fit step vs a bare PyTorch loop, on synthetic data."""
    from cnntrain.engine.bench import bench_train as run

    opts = BenchTrainOptions(recipe=recipe, steps=steps, batch_size=batch_size, device=device, overrides=list(set_),
                             warmup=warmup, repeats=repeats, compile=compile_model)
    write_json(run(opts), json_out)


@bench_app.command("make-jpegs")
def bench_make_jpegs(
    out: Path = typer.Argument(..., help="Folder to create (OUT/train/classK/*.jpg)."),
    count: int = typer.Option(1000, "--count", help="Training images."),
    classes: int = typer.Option(10, "--classes"),
    val: int = typer.Option(0, "--val", help="Validation images (OUT/val)."),
    size: str = typer.Option("500x375", "--size", help="WIDTHxHEIGHT."),
    quality: int = typer.Option(90, "--quality"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write ImageNet-sized photo-like JPEGs for `bench data` (no real ImageNet needed)."""
    from cnntrain.engine.bench import make_jpegs

    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise CnnTrainError(f"--size {size!r}: expected WIDTHxHEIGHT, e.g. 500x375") from None
    make_jpegs(out, count, classes, val, (w, h), quality, seed)


# ------------------------------------------------------------------ fine-tuning: predict, export, data
# (bodies in engine/predict.py, export.py, data/check.py and data/imagenet_val.py)


@app.command()
def predict(
    checkpoint: str = typer.Argument(..., help="A best.pt or last.pt."),
    paths: List[str] = typer.Argument(..., help="Images and/or folders (searched recursively)."),
    with_: List[str] = typer.Option([], "--with", help="Another checkpoint whose probabilities are averaged in "
                                    "(repeatable)."),
    topk: int = typer.Option(5, "--topk", help="Classes shown per image."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write every prediction to this file."),
    csv_out: Optional[str] = typer.Option(None, "--csv", help="Write path, class1, prob1, ... to this file."),
    batch_size: int = typer.Option(32, "--batch-size"),
    device: str = typer.Option("auto", "--device"),
    workers: int = typer.Option(0, "--workers"),
) -> None:
    """Label images: top-K classes with probabilities, through the checkpoint's evaluation view.
    Exit status 1 when some files could not be read (each is reported on its line)."""
    from cnntrain.engine.predict import PredictOptions, predict as run, write_csv

    result = run(PredictOptions(checkpoint=checkpoint, paths=list(paths), others=list(with_), topk=topk,
                                batch_size=batch_size, device=device, workers=workers))
    write_json(result, json_out)
    if csv_out:
        write_csv(result, csv_out)
    if result["unreadable"]:
        raise typer.Exit(1)


@app.command()
def export(
    checkpoint: str = typer.Argument(..., help="A best.pt or last.pt."),
    format_: str = typer.Option(..., "--format", help="safetensors, torchvision, torchscript, exported or onnx."),
    out: Path = typer.Option(..., "--out", help="The file to write."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write the check's result to this file."),
) -> None:
    """Write the model in a format other tools read; reloads it and checks its outputs."""
    from cnntrain.export import ExportOptions, export as run

    write_json(run(ExportOptions(checkpoint=checkpoint, format=format_, out=out)), json_out)


data_app = typer.Typer(no_args_is_help=True, help="Check a dataset, or arrange ImageNet's flat validation folder.")
app.add_typer(data_app, name="data")


@data_app.command("check")
def data_check(
    root: Path = typer.Argument(..., help="An ImageNet-style root: train/CLASS/IMAGE, val/CLASS/IMAGE."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write counts, sizes and problems to this file."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Classes and counts per split, missing/empty classes, unreadable or zero-byte files,
    train/val duplicates, image sizes. Exit 0 when clean, 1 when it found problems."""
    from cnntrain.data.check import check_root, print_report

    result = check_root(root, progress)
    print_report(result)
    write_json(result, json_out)
    if result["problems"]:
        raise typer.Exit(1)


@data_app.command("imagenet-val")
def data_imagenet_val(
    val_dir: Path = typer.Argument(..., help="The flat folder of ILSVRC2012_val_*.JPEG files."),
    labels: str = typer.Option(..., "--labels", help="LOC_val_solution.csv, or the devkit's "
                               "data/ILSVRC2012_validation_ground_truth.txt (with data/meta.mat beside it)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where the class folders go (default: VAL_DIR itself)."),
) -> None:
    """Hard-link ImageNet's flat validation images into class folders (OUT/WNID/*.JPEG)."""
    from cnntrain.data.imagenet_val import arrange

    target = output_folder(out, "--out", create=False) if out is not None else val_dir
    r = arrange(val_dir, labels, target)
    typer.echo(f"{target}: {r.linked} linked, {r.copied} copied (another file system), {r.present} already there; "
               f"{len(r.missing)} labelled but absent, {len(r.unlabelled)} without a label")
    if r.missing:
        typer.echo(f"absent: {', '.join(r.missing[:5])}{' ...' if len(r.missing) > 5 else ''}")


@bench_app.command("make-cifar")
def bench_make_cifar(
    out: Path = typer.Argument(..., help="Folder to create (OUT/cifar-10-batches-py/)."),
    count: int = typer.Option(50000, "--count", help="Training images (CIFAR-10 has 50,000)."),
    test: int = typer.Option(10000, "--test", help="Test images."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write a CIFAR-10 root of random pixels in the official pickle format, for `bench data`."""
    from cnntrain.engine.bench_cifar import make_cifar

    make_cifar(out, count, test, seed)


def _record_for_torchrun(exc: BaseException) -> None:
    """Under torchrun, leave the error where the launcher reports it from."""
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        try:
            from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

            ErrorHandler().record_exception(exc)
        except Exception:  # noqa: BLE001 - reporting must never hide the error itself
            pass


def main(argv: list[str] | None = None) -> None:
    _state["debug"] = False  # main() may run several times in one process (tests)
    try:
        app(args=argv, prog_name="cnntrain")
    except CnnTrainError as exc:
        _record_for_torchrun(exc)
        if _state["debug"]:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:
        # A path the system refused (missing, a file where a folder belongs, unwritable)
        # is the user's to fix; other OS errors keep their traceback.
        _record_for_torchrun(exc)
        if _state["debug"] or not exc.filename:
            raise
        print(f"error: {exc.filename}: {exc.strerror or exc}; check the path", file=sys.stderr)
        sys.exit(CnnTrainError.exit_code)
    except Exception as exc:
        _record_for_torchrun(exc)
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
