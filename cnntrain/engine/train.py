"""The training loop behind ``cnntrain fit``.

One epoch loop for every recipe and device: SGD step under (optional) autocast, the
recipe's learning-rate schedule applied per step, validation every ``train.eval_every``
epochs, ``last.pt`` after each epoch (and every ``train.save_every_steps`` steps) and
``best.pt`` whenever validation top-1 improves, all written atomically, and one line per
epoch in ``metrics.jsonl`` and TensorBoard.

Fault tolerance: ``last.pt`` holds everything the next step depends on (weights,
optimiser, schedule, scaler, epoch and position in it, the epoch's running metrics and
every RNG state), and the sample order and augmentation are functions of (seed, epoch,
position), so a run killed at any step and resumed ends bitwise equal to one that was
never stopped (on CPU). SIGTERM/SIGINT/SIGUSR1 finish the step, save and exit with
code 75; a non-finite loss stops with code 3 (or skips the step, if the recipe says so).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from cnntrain import __version__
from cnntrain.data import BatchPrep, DataBundle, build_data, default_workers
from cnntrain.engine import distributed
from cnntrain.engine.checkpoint import FORMAT, load_checkpoint, model_meta, save_atomic, unwrap
from cnntrain.engine.device import (Precision, ahead_to_device, choose_precision, rng_state, seed_everything,
                                    set_rng_state)
from cnntrain.engine.ema import make_average
from cnntrain.engine.evaluate import evaluate
from cnntrain.engine.metrics import Meter
from cnntrain.engine.modelbuild import model_from_recipe
from cnntrain.engine.optim import LRSchedule, build_optimizer
from cnntrain.engine.step import FitStep, main_output, training_loss  # noqa: F401 - re-exported
from cnntrain.engine.signals import GracefulStop, TrainingStopped
from cnntrain.errors import CnnTrainError

EXIT_NONFINITE = 3


class NonFiniteLoss(CnnTrainError):
    exit_code = EXIT_NONFINITE
from cnntrain.recipe import Recipe


@dataclass
class FitOptions:
    out: Path
    data: str | None = None
    device: str = "auto"
    workers: int | None = None
    resume: str | None = None  # "auto" or a checkpoint path
    progress: bool = True
    strategy: str = "ddp"  # "dp": torch.nn.DataParallel over all visible GPUs in one process


class Trainer:
    def __init__(self, recipe: Recipe, opts: FitOptions) -> None:
        self.recipe = recipe
        self.out = Path(opts.out)
        self.env, self.device = distributed.setup(opts.device, recipe.train.dist_timeout)
        self.opts = dataclasses.replace(opts, progress=opts.progress and self.env.is_main)
        self.precision: Precision = choose_precision(self.device, recipe.train.amp, recipe.train.channels_last)
        seed_everything(recipe.train.seed, recipe.train.deterministic)
        self.data: DataBundle = build_data(recipe, opts.data, train=True)
        self._check_classes()
        self.model = model_from_recipe(recipe, self.data.num_classes, self.data.channels).to(self.device)
        if self.precision.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model = distributed.wrap_model(self.model, self.env, self.device, opts.strategy, recipe.train.sync_bn)
        self.optimizer = build_optimizer(self.model, recipe.optim)
        self.ema = make_average(unwrap(self.model), recipe.train.ema_decay)  # Polyak averaging
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaler_needed)
        workers = opts.workers if opts.workers is not None else recipe.data.workers
        self.workers = default_workers(self.data.kind, self.env.local_world) if workers is None else workers
        pin = self.device.type == "cuda"
        self.batch = distributed.per_process_batch(recipe.optim.batch_size, self.env, recipe.train.accumulate)
        self.train_loader = distributed.train_loader(self.data.train, self.batch, self.env, recipe.train.seed,
                                                     self.workers, pin)
        self.sampler = self.train_loader.sampler
        eval_batch = max(1, (recipe.eval.batch_size or recipe.optim.batch_size) // self.env.world)
        self.val_loader = (distributed.val_loader(self.data.val, eval_batch, self.env, self.workers, pin)
                           if len(self.data.val) else None)
        self.steps_per_epoch = math.ceil(self.sampler.per_rank / self.batch)
        limits = [recipe.train.iterations or math.inf,
                  (recipe.train.epochs or math.inf) * self.steps_per_epoch]
        self.total_steps = int(min(limits))
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.schedule = LRSchedule(recipe.schedule, recipe.optim.lr, self.steps_per_epoch, self.total_steps)
        self.prep = BatchPrep(self.data.mean, self.data.std, self.device, self.precision.channels_last,
                              recipe.augment.pca_lighting)
        self.fit_step = FitStep(self.model, self.optimizer, self.scaler, self.prep, self.precision, self.device,
                                label_smoothing=recipe.train.label_smoothing,
                                accumulate=recipe.train.accumulate, aux_weight=recipe.train.aux_weight,
                                env=self.env)
        self.epoch = 0  # completed epochs
        self.epoch_step = 0  # completed steps within the current epoch
        self.step = 0  # completed optimisation steps
        self.best_top1: float | None = None
        self.meter = Meter((1,))
        self.nonfinite_skipped = 0
        self.amp_skipped = 0
        self.skipped: list[str] = []
        self.meta = model_meta(recipe.to_dict(), self.data.classes, self.data.channels,
                               self.data.mean, self.data.std)
        self.meta["data"] = self.data.root or (opts.data if opts.data else None)
        self.stop = GracefulStop()

    def _check_classes(self) -> None:
        wanted = self.recipe.data.num_classes
        if wanted is not None and self.data.kind != "synthetic" and wanted != self.data.num_classes:
            raise CnnTrainError(
                f"recipe sets data.num_classes = {wanted} but {self.data.root} has "
                f"{self.data.num_classes} classes; remove the key or fix the data"
            )

    # ----------------------------------------------------------------- checkpoints

    def state(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": __version__,
            "meta": self.meta,
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "epoch_step": self.epoch_step,
            "step": self.step,
            "best_top1": self.best_top1,
            "meter": self.meter.state_dict(),
            "counters": {"nonfinite_skipped": self.nonfinite_skipped, "amp_skipped": self.amp_skipped},
            "rng": rng_state(),
            **({"ema": self.ema.state_dict()} if self.ema else {}),
        }

    def _resume_candidates(self, spec: str) -> list[Path]:
        if spec != "auto":
            return [Path(spec)]
        return [p for p in (self.out / "last.pt", self.out / "prev.pt") if p.is_file()]

    def resume(self, spec: str) -> None:
        """Restore the newest loadable checkpoint; say which, and why others were passed over."""
        found: list[tuple[int, Path, dict]] = []
        for path in self._resume_candidates(spec):
            try:
                payload = load_checkpoint(path)
            except CnnTrainError as exc:
                if spec != "auto":
                    raise
                print(f"resume: skipping {path}: {exc}")
                continue
            if "optimizer" not in payload:
                raise CnnTrainError(f"{path} holds weights only (a best.pt); resume from last.pt")
            found.append((payload["step"], path, payload))
        if not found:
            print(f"resume: no usable checkpoint in {self.out}, starting from scratch")
            return
        found.sort(key=lambda item: item[0], reverse=True)
        step, path, payload = found[0]
        for other_step, other, _ in found[1:]:
            print(f"resume: passing over {other} (step {other_step}, older)")
        meta = payload["meta"]
        if meta["arch"] != self.recipe.model.arch or len(meta["classes"]) != self.data.num_classes:
            raise CnnTrainError(
                f"cannot resume from {path}: it holds {meta['arch']} with {len(meta['classes'])} classes, "
                f"this run trains {self.recipe.model.arch} with {self.data.num_classes}; use another --out"
            )
        unwrap(self.model).load_state_dict(payload["model"])
        if self.ema is not None:  # a checkpoint from a run without averaging starts it from the weights
            self.ema.load_state_dict(payload.get("ema") or {"model": payload["model"], "updates": 0})
        self.optimizer.load_state_dict(payload["optimizer"])
        self.schedule.load_state_dict(payload["schedule"])
        self.scaler.load_state_dict(payload["scaler"])
        self.epoch, self.epoch_step, self.step = payload["epoch"], payload["epoch_step"], payload["step"]
        self.best_top1 = payload["best_top1"]
        self.meter.load_state_dict(payload["meter"])
        self.nonfinite_skipped = payload["counters"]["nonfinite_skipped"]
        self.amp_skipped = payload["counters"]["amp_skipped"]
        set_rng_state(payload["rng"])
        if self.env.is_main:
            self._truncate_metrics()
        print(f"resume: {path} at epoch {self.epoch}, step {self.step}"
              f"{f' ({self.epoch_step} into epoch {self.epoch + 1})' if self.epoch_step else ''}")

    def _truncate_metrics(self) -> None:
        """Drop log lines of epochs the checkpoint does not contain (written before a kill)."""
        path = self.out / "metrics.jsonl"
        if path.is_file():
            lines = path.read_text().splitlines()
            keep = [line for line in lines if line.strip() and json.loads(line)["epoch"] <= self.epoch]
            if len(keep) != len(lines):
                path.write_text("".join(line + "\n" for line in keep))

    def save(self, improved: bool = False) -> None:
        state = self.state()
        save_atomic(state, self.out / "last.pt", previous=self.out / "prev.pt")
        if improved:
            weights = {k: state[k] for k in ("format", "version", "meta", "model", "epoch", "step", "best_top1")}
            if self.ema is not None:  # best.pt holds the averaged weights that were validated
                weights["model"] = state["ema"]["model"]
            save_atomic(weights, self.out / "best.pt")

    # ----------------------------------------------------------------- loop

    def train_epoch(self) -> dict[str, Any]:
        self.model.train()
        if self.epoch_step == 0:
            self.meter = Meter((1,))
        meter = self.meter
        save_every = self.recipe.train.save_every_steps
        self.sampler.set_epoch(self.epoch, self.epoch_step * self.batch)
        distributed.reseed_rank(self.env, self.recipe.train.seed, self.epoch, self.epoch_step)
        start, seen = time.perf_counter(), 0
        batches = ahead_to_device(self.train_loader, self.device)
        bar = tqdm(batches, desc=f"epoch {self.epoch + 1}/{self.epochs}", leave=False,
                   initial=self.epoch_step, total=self.steps_per_epoch,
                   disable=None if self.opts.progress else True, dynamic_ncols=True)
        lr = self.schedule.lr_at(self.step)
        for images, target, skipped in bar:
            self._note_skipped(skipped)
            if self.step >= self.total_steps:
                break
            lr = self.schedule.apply(self.optimizer, self.step)
            if images.numel() == 0:
                distributed.check_batch(images, self.env)
            else:
                seen += self._train_step(images, target, lr, meter)
            self.step += 1
            self.epoch_step += 1
            rate = seen / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{meter.loss:.3f}", top1=f"{meter.accuracy(1):.1f}", lr=f"{lr:.3g}",
                            ips=f"{rate:.0f}", refresh=False)
            if distributed.any_flag(self.stop.requested is not None, self.env, self.device):
                self._stop_now()
            if save_every and self.step % save_every == 0 and self.epoch_step < self.steps_per_epoch:
                self.save()
        elapsed = time.perf_counter() - start
        meter = distributed.reduce_meter(meter, self.env, self.device)  # every process's samples
        seen = seen * self.env.world
        return {"train_loss": meter.loss, "train_top1": meter.accuracy(1), "lr": lr,
                "images_per_s": seen / max(elapsed, 1e-9), "epoch_time_s": elapsed}

    def _train_step(self, images: torch.Tensor, target: torch.Tensor, lr: float, meter: Meter) -> int:
        """One optimiser step; returns the images it trained on (0 for a skipped step)."""
        logits, y, loss_value = self.fit_step(images, target, check=lambda value: self._check_loss(value, lr))
        if not self.fit_step.stepped:
            return 0
        self.amp_skipped += self.fit_step.overflowed  # fp16 overflow: skipped by the scaler, by design
        if self.ema is not None:
            self.ema.update(unwrap(self.model))
        meter.update(logits, y, loss_value)
        return int(y.shape[0])

    def _check_loss(self, value: float, lr: float) -> bool:
        """False skips the update (train.on_nonfinite = "skip"); stopping raises."""
        if math.isfinite(value):
            return True
        self._nonfinite(value, lr)
        return False

    def _note_skipped(self, skipped: list) -> None:
        if not skipped:
            return
        if self.recipe.data.strict:
            bad = skipped[0]
            raise CnnTrainError(f"unreadable image {bad.path} ({bad.reason}); data.strict = true stops here")
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "skipped.txt", "a") as fh:
            for bad in skipped:
                fh.write(f"{bad.path}\t{bad.reason}\n")
        self.skipped += [bad.path for bad in skipped]

    def _nonfinite(self, value: float, lr: float) -> None:
        cfg = self.recipe.train
        if cfg.on_nonfinite == "skip" and self.nonfinite_skipped < cfg.max_nonfinite_steps:
            self.nonfinite_skipped += 1
            print(f"warning: loss is {value} at step {self.step + 1}; step skipped "
                  f"({self.nonfinite_skipped} of at most {cfg.max_nonfinite_steps})")
            return
        last = self.out / "last.pt"
        where = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
        limit = (f" after skipping {self.nonfinite_skipped} such steps (train.max_nonfinite_steps)"
                 if cfg.on_nonfinite == "skip" else "")
        raise NonFiniteLoss(
            f"loss became {value} at step {self.step + 1} (epoch {self.epoch + 1}, lr {lr:.4g}){limit}; "
            f"{where}. Lower optim.lr, check the data, or set train.on_nonfinite = \"skip\""
        )

    def _stop_now(self) -> None:
        if self.env.is_main:
            self.save()
        raise TrainingStopped(
            f"stopped by {self.stop.requested or 'a signal to another process'} after step {self.step} (epoch {self.epoch + 1}); "
            f"checkpoint {self.out / 'last.pt'}; continue with --resume auto"
        )

    def validate(self) -> dict[str, Any]:
        if self.val_loader is None:
            return {}
        ks = (1, self.recipe.eval.topk)
        model = self.ema.module if self.ema is not None else distributed.eval_model(self.model)
        (meter,), skipped = evaluate([model], self.val_loader, [self.prep], self.device,
                                     self.precision, ks, progress=self.opts.progress)
        self._note_skipped(skipped)
        meter = distributed.reduce_meter(meter, self.env, self.device)  # each sample once, over all shards
        result = meter.result()
        return {f"val_{k}": v for k, v in result.items()}

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        if self.opts.resume:
            self.resume(self.opts.resume)
            distributed.agree(self.env, self.step, "the step to resume from")
        if self.env.is_main:
            (self.out / "recipe.toml").write_text(self.recipe.to_toml())
        for note in self.data.notes:
            print(f"note: {note}")
        print(f"fit {self.recipe.name}: {self.recipe.model.arch} on {self.data.kind} "
              f"({len(self.data.train)} train / {len(self.data.val)} val, {self.data.num_classes} classes), "
              f"{distributed.describe(self.env, self.device, self.model)} {self.precision.describe()}, "
              f"{self.epochs} epochs x {self.steps_per_epoch} steps -> {self.out}")
        log = distributed.run_log(self.out, self.env)
        record: dict[str, Any] = {}
        try:
            with self.stop:
                while self.epoch < self.epochs and self.step < self.total_steps:
                    record = self._epoch(log)
        finally:
            log.close()
        if self.skipped:
            print(f"skipped {len(self.skipped)} unreadable file(s); paths in {self.out / 'skipped.txt'}")
        return {"out": str(self.out), "epochs": self.epoch, "steps": self.step,
                "best_top1": self.best_top1, **record}

    def _epoch(self, log: RunLog) -> dict[str, Any]:
        skipped_before = len(self.skipped)
        record = self.train_epoch()
        self.epoch += 1
        self.epoch_step = 0
        last_epoch = self.epoch == self.epochs or self.step >= self.total_steps
        if self.epoch % self.recipe.train.eval_every == 0 or last_epoch:
            record.update(self.validate())
        top1 = record.get("val_top1")
        improved = False
        if top1 is not None:
            self.schedule.observe(top1)
            improved = self.best_top1 is None or top1 > self.best_top1
            self.best_top1 = top1 if improved else self.best_top1
        elif self.val_loader is None:
            improved = True  # nothing to compare: best is the latest
        record = {"epoch": self.epoch, "step": self.step, **record,
                  "skipped": len(self.skipped) - skipped_before,
                  "nonfinite_skipped": self.nonfinite_skipped, "amp_skipped": self.amp_skipped}
        log.epoch(record)  # before the checkpoint: a kill in between re-runs and rewrites it
        if self.env.is_main:
            self.save(improved)
        print(self._epoch_line(record))
        if distributed.any_flag(self.stop.requested is not None, self.env, self.device):
            raise TrainingStopped(
                f"stopped by {self.stop.requested or 'a signal to another process'} at the end of epoch {self.epoch}; "
                f"checkpoint {self.out / 'last.pt'}; continue with --resume auto"
            )
        return record

    def _epoch_line(self, r: dict[str, Any]) -> str:
        parts = [f"epoch {r['epoch']}/{self.epochs}", f"step {r['step']}",
                 f"loss {r['train_loss']:.4f}", f"train top1 {r['train_top1']:.2f}%"]
        if "val_top1" in r:
            k = self.recipe.eval.topk
            parts += [f"val top1 {r['val_top1']:.2f}%", f"top{k} {r.get(f'val_top{k}', 0):.2f}%"]
        parts += [f"lr {r['lr']:.4g}", f"{r['images_per_s']:.0f} img/s"]
        if r.get("skipped"):
            parts.append(f"skipped {r['skipped']} unreadable")
        if r.get("amp_skipped"):
            parts.append(f"fp16 overflow steps {r['amp_skipped']}")
        return "  ".join(parts)


def fit(recipe: Recipe, opts: FitOptions) -> dict[str, Any]:
    result = Trainer(recipe, opts).run()
    distributed.teardown()  # not on errors: the process is ending, and peers must see its error first
    return result
