"""The training loop behind ``cnntrain fit``.

One epoch loop for every recipe and device: SGD step under (optional) autocast, the
recipe's learning-rate schedule applied per step, validation every ``train.eval_every``
epochs, ``last.pt`` after each epoch and ``best.pt`` whenever validation top-1 improves,
both written atomically, and one line per epoch in ``metrics.jsonl`` and TensorBoard.
"""
from __future__ import annotations

import dataclasses
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
from cnntrain.engine.device import Precision, choose_precision, rng_state, seed_everything, set_rng_state
from cnntrain.engine.evaluate import evaluate
from cnntrain.engine.metrics import Meter
from cnntrain.engine.modelbuild import model_from_recipe
from cnntrain.engine.optim import LRSchedule, build_optimizer
from cnntrain.engine.step import FitStep, main_output, training_loss  # noqa: F401 - re-exported
from cnntrain.errors import CnnTrainError
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
        seed_everything(recipe.train.seed)
        self.data: DataBundle = build_data(recipe, opts.data, train=True)
        self._check_classes()
        self.model = model_from_recipe(recipe, self.data.num_classes, self.data.channels).to(self.device)
        if self.precision.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model = distributed.wrap_model(self.model, self.env, self.device, opts.strategy, recipe.train.sync_bn)
        self.optimizer = build_optimizer(self.model, recipe.optim)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaler_needed)
        workers = opts.workers if opts.workers is not None else recipe.data.workers
        self.workers = default_workers(self.data.kind, self.env.local_world) if workers is None else workers
        pin = self.device.type == "cuda"
        batch = distributed.per_process_batch(recipe.optim.batch_size, self.env, recipe.train.accumulate)
        self.train_loader = distributed.train_loader(self.data.train, batch, self.env, recipe.train.seed,
                                                     self.workers, pin)
        eval_batch = max(1, (recipe.eval.batch_size or recipe.optim.batch_size) // self.env.world)
        self.val_loader = (distributed.val_loader(self.data.val, eval_batch, self.env, self.workers, pin)
                           if len(self.data.val) else None)
        self.steps_per_epoch = len(self.train_loader)
        limits = [recipe.train.iterations or math.inf,
                  (recipe.train.epochs or math.inf) * self.steps_per_epoch]
        self.total_steps = int(min(limits))
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.schedule = LRSchedule(recipe.schedule, recipe.optim.lr, self.steps_per_epoch, self.total_steps)
        self.prep = BatchPrep(self.data.mean, self.data.std, self.device, self.precision.channels_last,
                              recipe.augment.pca_lighting)
        self.fit_step = FitStep(self.model, self.optimizer, self.scaler, self.prep, self.precision, self.device,
                                label_smoothing=recipe.train.label_smoothing,
                                accumulate=recipe.train.accumulate, env=self.env)
        self.epoch = 0  # completed epochs
        self.step = 0  # completed optimisation steps
        self.best_top1: float | None = None
        self.skipped: list[str] = []
        self.meta = model_meta(recipe.to_dict(), self.data.classes, self.data.channels,
                               self.data.mean, self.data.std)
        self.meta["data"] = self.data.root or (opts.data if opts.data else None)

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
            "step": self.step,
            "best_top1": self.best_top1,
            "rng": rng_state(),
            "loader_rng": self.train_loader.generator.get_state(),
        }

    def resume(self, spec: str) -> None:
        path = self.out / "last.pt" if spec == "auto" else Path(spec)
        if spec == "auto" and not path.is_file():
            print(f"resume: no checkpoint in {self.out}, starting from scratch")
            return
        payload = load_checkpoint(path)
        meta = payload["meta"]
        if meta["arch"] != self.recipe.model.arch or len(meta["classes"]) != self.data.num_classes:
            raise CnnTrainError(
                f"cannot resume from {path}: it holds {meta['arch']} with {len(meta['classes'])} classes, "
                f"this run trains {self.recipe.model.arch} with {self.data.num_classes}"
            )
        if "optimizer" not in payload:
            raise CnnTrainError(f"{path} holds weights only (a best.pt); resume from last.pt")
        unwrap(self.model).load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.schedule.load_state_dict(payload["schedule"])
        self.scaler.load_state_dict(payload["scaler"])
        self.epoch, self.step, self.best_top1 = payload["epoch"], payload["step"], payload["best_top1"]
        set_rng_state(payload["rng"])
        self.train_loader.generator.set_state(payload["loader_rng"])
        print(f"resume: {path} at epoch {self.epoch}, step {self.step}")

    def save(self, improved: bool) -> None:
        state = self.state()
        save_atomic(state, self.out / "last.pt")
        if improved:
            weights = {k: state[k] for k in ("format", "version", "meta", "model", "epoch", "step", "best_top1")}
            save_atomic(weights, self.out / "best.pt")

    # ----------------------------------------------------------------- loop

    def train_epoch(self) -> dict[str, Any]:
        self.model.train()
        distributed.begin_epoch(self.train_loader, self.epoch, self.env, self.recipe.train.seed)
        meter = Meter((1,))
        start, seen = time.perf_counter(), 0
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{self.epochs}", leave=False,
                   disable=None if self.opts.progress else True, dynamic_ncols=True)
        lr = self.schedule.lr_at(self.step)
        for images, target, skipped in bar:
            self._note_skipped(skipped)
            if self.step >= self.total_steps:
                break
            if images.numel() == 0:
                distributed.check_batch(images, self.env)
                continue
            lr = self.schedule.apply(self.optimizer, self.step)
            logits, y, loss_value = self.fit_step(
                images, target, check=lambda value: None if math.isfinite(value) else self._nonfinite(value, lr))
            self.step += 1
            meter.update(logits, y, loss_value)
            seen += int(y.shape[0])
            rate = seen / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{meter.loss:.3f}", top1=f"{meter.accuracy(1):.1f}", lr=f"{lr:.3g}",
                            ips=f"{rate:.0f}", refresh=False)
        elapsed = time.perf_counter() - start
        meter = distributed.reduce_meter(meter, self.env, self.device)  # every process's samples
        return {"train_loss": meter.loss, "train_top1": meter.accuracy(1), "lr": lr,
                "images_per_s": meter.samples / max(elapsed, 1e-9), "epoch_time_s": elapsed}

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
        last = self.out / "last.pt"
        where = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
        raise CnnTrainError(
            f"loss became {value} at step {self.step + 1} (epoch {self.epoch + 1}, lr {lr:.4g}); "
            f"{where}. Lower optim.lr or check the data"
        )

    def validate(self) -> dict[str, Any]:
        if self.val_loader is None:
            return {}
        ks = (1, self.recipe.eval.topk)
        (meter,), skipped = evaluate([distributed.eval_model(self.model)], self.val_loader, [self.prep],
                                     self.device, self.precision, ks, progress=self.opts.progress)
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
              f"{self.epochs} epochs x {self.steps_per_epoch} steps "
              f"-> {self.out}")
        log = distributed.run_log(self.out, self.env)
        record: dict[str, Any] = {}
        try:
            while self.epoch < self.epochs and self.step < self.total_steps:
                skipped_before = len(self.skipped)
                record = self.train_epoch()
                self.epoch += 1
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
                if self.env.is_main:
                    self.save(improved)
                record = {"epoch": self.epoch, "step": self.step, **record,
                          "skipped": len(self.skipped) - skipped_before}
                log.epoch(record)
                print(self._epoch_line(record))
        finally:
            log.close()
        if self.skipped:
            print(f"skipped {len(self.skipped)} unreadable file(s); paths in {self.out / 'skipped.txt'}")
        return {"out": str(self.out), "epochs": self.epoch, "steps": self.step,
                "best_top1": self.best_top1, **record}

    def _epoch_line(self, r: dict[str, Any]) -> str:
        parts = [f"epoch {r['epoch']}/{self.epochs}", f"step {r['step']}",
                 f"loss {r['train_loss']:.4f}", f"train top1 {r['train_top1']:.2f}%"]
        if "val_top1" in r:
            k = self.recipe.eval.topk
            parts += [f"val top1 {r['val_top1']:.2f}%", f"top{k} {r.get(f'val_top{k}', 0):.2f}%"]
        parts += [f"lr {r['lr']:.4g}", f"{r['images_per_s']:.0f} img/s"]
        if r.get("skipped"):
            parts.append(f"skipped {r['skipped']}")
        return "  ".join(parts)


def fit(recipe: Recipe, opts: FitOptions) -> dict[str, Any]:
    result = Trainer(recipe, opts).run()
    distributed.teardown()  # not on errors: the process is ending, and peers must see its error first
    return result
