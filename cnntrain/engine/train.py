"""The training loop behind ``cnntrain fit``.

One loop for every recipe and device (:meth:`Trainer.run`): the recipe's learning rate
applied per step, one optimisation step (:class:`~cnntrain.engine.step.FitStep`, under
the precision policy), the running metrics, a stop check, validation every
``train.eval_every`` epochs, ``last.pt`` after each epoch (and every
``train.save_every_steps`` steps) and ``best.pt`` whenever validation top-1 improves,
all written atomically, and one line per epoch in ``metrics.jsonl`` and TensorBoard.

The parts come from :mod:`~cnntrain.engine.factory`, checkpoints and resume from
:mod:`~cnntrain.engine.runstate`, the skip / non-finite / stop rules from
:mod:`~cnntrain.engine.guards`. The sample order and augmentation are functions of
(seed, epoch, position), so a run killed at any step and resumed ends bitwise equal to
one that was never stopped (on CPU), with one process or several (every rank's RNG
state is saved). SIGTERM/SIGINT/SIGUSR1 finish the step, save and exit with code 75
(SIGUSR1 under SLURM with ``train.requeue`` also requeues the job); a non-finite loss
stops with code 3 (or skips the step, if the recipe says so); no finished step for
``train.watchdog`` seconds dumps every stack and exits with code 124.

The run folder is claimed and locked first (:mod:`~cnntrain.engine.runfolder`); a process
restarted by torch's elastic agent (``--max-restarts``) resumes from the newest good
checkpoint by itself.
"""
from __future__ import annotations

import dataclasses
import math
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from cnntrain.data import DataBundle, build_data, default_workers, gpudecode, resident, train_loader, val_loader
from cnntrain.data.loaders import gpu_decode_loader, workers_guarded
from cnntrain.data.views import progressive_size
from cnntrain.engine import collectives, distributed, factory, requeue, runfolder
from cnntrain.engine.checkpoint import model_meta, unwrap
from cnntrain.engine.device import ahead_to_device, seed_everything
from cnntrain.engine.evaluate import evaluate, fp32_head_during
from cnntrain.engine.guards import EXIT_NONFINITE, Guards, NonFiniteLoss, stopped  # noqa: F401 - re-exported
from cnntrain.engine.metrics import Meter, RunLog, epoch_line, run_log
from cnntrain.engine.mixing import mixes
from cnntrain.engine.optim import LRSchedule
from cnntrain.engine.options import FitOptions
from cnntrain.engine.paperline import accuracy_ks
from cnntrain.engine.runstate import Progress, RunState, running_marker
from cnntrain.engine.signals import GracefulStop
from cnntrain.engine.step import main_output, training_loss  # noqa: F401 - re-exported
from cnntrain.engine.watchdog import Watchdog
from cnntrain.errors import CnnTrainError
from cnntrain.recipe import Recipe


POSTFIX_EVERY = 25  # steps between progress-bar figures (each read waits for the device)


class Trainer:
    def __init__(self, recipe: Recipe, opts: FitOptions) -> None:
        self.recipe, self.out = recipe, Path(opts.out)
        self.env, self.device = distributed.setup(opts.device, recipe.train.dist_timeout, recipe.train.deterministic,
                                                   fixed_shapes=True, training=True)
        # A process the elastic agent restarted continues the run it was part of.
        resume = opts.resume or ("auto" if distributed.restart_count() else None)
        self.opts = dataclasses.replace(opts, progress=opts.progress and self.env.is_main, resume=resume)
        seed_everything(recipe.train.seed, recipe.train.deterministic)
        self.data: DataBundle = build_data(recipe, opts.data, train=True)
        self._check_classes()
        d = self.data
        self.parts = factory.build_run(recipe, self.device, num_classes=d.num_classes, channels=d.channels,
                                       mean=d.mean, std=d.std, env=self.env, strategy=opts.strategy,
                                       classes=d.classes)
        self.model, self.optimizer, self.fit_step = self.parts.model, self.parts.optimizer, self.parts.fit_step
        workers = opts.workers if opts.workers is not None else recipe.data.workers
        workers = default_workers(d.kind, self.env.local_world) if workers is None else workers
        pin, env = self.device.type == "cuda", self.env
        self.batch = distributed.per_process_batch(recipe.optim.batch_size, env, recipe.train.accumulate)
        self.train_loader = self._train_loader(workers, pin)
        self.sampler = self.train_loader.sampler
        eval_batch = max(1, (recipe.eval.batch_size or recipe.optim.batch_size) // env.world)
        self.val_loader = (val_loader(d.val, eval_batch, env.rank, env.world, workers, pin)
                           if len(d.val) else None)
        self.steps_per_epoch = math.ceil(self.sampler.per_rank / self.batch)
        limits = [recipe.train.iterations or math.inf, (recipe.train.epochs or math.inf) * self.steps_per_epoch]
        self.total_steps = int(min(limits))
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        if factory.wants_compile(recipe.train.compile, self.device, self.total_steps, self.model):
            factory.compile_step(self.fit_step, self.batch // max(1, recipe.train.accumulate))
        self.schedule = LRSchedule(recipe.schedule, recipe.optim.lr, self.steps_per_epoch, self.total_steps)
        recipe.data.root = d.record  # recorded exactly, so eval and the saved recipe.toml read the same data
        meta = model_meta(recipe.to_dict(), d.classes, d.channels, d.mean, d.std)
        meta["data"] = d.record
        self.state = RunState(self.out, meta, self.model, self.optimizer, self.schedule, self.parts.scaler,
                              self.parts.ema, keep=recipe.train.keep_checkpoints, rank=env.rank, world=env.world,
                              force=opts.resume_force)
        self.progress: Progress = self.state.progress
        self.guards = Guards(recipe, self.out, env, self.progress)
        self.stop = GracefulStop()
        self.skipped_before_epoch = 0

    def _train_loader(self, workers: int, pin: bool):
        """Device-resident batches where ``data.on_device`` allows, JPEGs decoded on the GPU
        where ``data.decode`` says so, else the worker loader."""
        d, env, seed = self.data, self.env, self.recipe.train.seed
        if resident.use_resident(self.recipe, d.train, d.channels, self.device):
            d.notes.append(f"training images held on {self.device.type} as uint8, batches cropped and flipped "
                           "there (data.on_device)")
            return resident.resident_loader(self.recipe, d.train, self.device, self.batch, env.rank, env.world, seed)
        repeats, persistent = self.recipe.train.repeated_aug, not self.recipe.data.progressive
        if gpudecode.use_gpu_decode(self.recipe, d.train, self.device):
            d.notes.append(f"JPEGs decoded on {self.device} (nvJPEG), views applied there (data.decode)")
            return gpu_decode_loader(d.train, self.batch, env.rank, env.world, seed, workers, self.device,
                                     persistent=persistent, repeats=repeats)
        return train_loader(d.train, self.batch, env.rank, env.world, seed, workers, pin, repeats=repeats,
                            persistent=persistent)

    def _check_classes(self) -> None:
        wanted = self.recipe.data.num_classes
        if wanted is not None and self.data.kind != "synthetic" and wanted != self.data.num_classes:
            raise CnnTrainError(
                f"recipe sets data.num_classes = {wanted} but {self.data.root} has "
                f"{self.data.num_classes} classes; remove the key or fix the data"
            )

    # ----------------------------------------------------------------- the loop

    def run(self) -> dict[str, Any]:
        lock = runfolder.claim(self.out, self.opts.resume, self.opts.overwrite) if self.env.is_main else None
        try:
            with workers_guarded(getattr(self.train_loader, "loader", self.train_loader), self.val_loader):
                return self._run()
        finally:
            if lock is not None:
                lock.release()

    def _run(self) -> dict[str, Any]:
        self._begin()
        p, record, main = self.progress, {}, self.env.is_main
        self.watchdog = Watchdog(self.recipe.train.watchdog, self.out, self.env.rank)
        with self.stop, self.watchdog, running_marker(self.out, main), closing(run_log(self.out, main)) as log:
            while p.epoch < self.epochs and p.step < self.total_steps:
                bar, start, seen, lr = self._begin_epoch()
                for images, target, skipped in bar:
                    self.guards.note_skipped(skipped)
                    if p.step >= self.total_steps:
                        break
                    lr = self.schedule.apply(self.optimizer, p.step)
                    seen, stop = seen + self._train_step(images, target, lr), self._stop_requested(images)
                    p.step += 1
                    p.epoch_step += 1
                    self.watchdog.beat()
                    if self.opts.progress and p.step % POSTFIX_EVERY == 0:  # a read waits for the device
                        self._show(bar, lr, seen / max(time.perf_counter() - start, 1e-9))
                    if stop:
                        self._save()
                        raise self._stopped(f"after step {p.step} (epoch {p.epoch + 1})")
                    every = self.recipe.train.save_every_steps
                    if every and p.step % every == 0 and p.epoch_step < self.steps_per_epoch and p.step < self.total_steps:
                        self._save()
                record = self._end_epoch(log, lr, seen, time.perf_counter() - start)
        if self.guards.skipped:
            print(f"skipped {len(self.guards.skipped)} unreadable file(s); paths in {self.out / 'skipped.txt'}")
        return {"out": str(self.out), "epochs": p.epoch + (p.epoch_step > 0), "steps": p.step, "best_top1": p.best_top1, **record}

    def _train_step(self, images: torch.Tensor, target: torch.Tensor, lr: float) -> int:
        """One optimiser step; returns the images it trained on (0 for a skipped step)."""
        if images.numel() == 0:
            self.guards.empty_batch(images)
            return 0
        with self.guards.deterministic_kernels():
            logits, y, _ = self.fit_step(images, target, check=lambda value: self.guards.loss_ok(value, lr),
                                         step=self.progress.step, stop=self.stop.requested is not None)
        if not self.fit_step.stepped:
            return 0
        self.progress.amp_skipped = self.progress.amp_skipped + self.fit_step.overflowed  # a device count
        self.progress.meter.update(logits, y, self.fit_step.loss)
        return int(y.shape[0])

    def _stop_requested(self, images: torch.Tensor | None = None) -> bool:
        """A stop signal on any process (all ranks must leave at the same step). After a
        step it travelled with the step's loss; otherwise it takes a collective of its own."""
        if images is not None and images.numel():
            return self.fit_step.stop_everywhere
        return collectives.any_flag(self.stop.requested is not None, self.env, self.device)

    def _save(self, improved: bool = False) -> None:
        """Write the checkpoint on rank 0 with every rank's RNG and sampler state (a
        collective: every process calls it at the same step)."""
        ranks = collectives.gather_to_main(self.state.rank_state(self.progress.epoch_step * self.batch), self.env)
        if self.env.is_main:
            self.state.save(improved, ranks)

    def _stopped(self, where: str) -> CnnTrainError:
        """The graceful stop's error; under SLURM with train.requeue, after requeueing."""
        error = stopped(self.stop.requested, where, self.out)
        if requeue.wanted(self.recipe, self.stop.requested, self.env.is_main):
            print(requeue.requeue())
        return error

    # ----------------------------------------------------------------- around the loop

    def _begin(self) -> None:
        if self.opts.resume:
            self.state.resume(self.opts.resume, truncate_log=self.env.is_main)
            collectives.agree(self.env, self.progress.step, "the step to resume from")
        if self.env.is_main:
            (self.out / "recipe.toml").write_text(self.recipe.to_toml())
        for note in [*self.data.notes, *filter(None, [self._ks()[1]])]:
            print(f"note: {note}")
        d = self.data
        print(f"fit {self.recipe.name}: {self.recipe.model.arch} on {d.kind} "
              f"({len(d.train)} train / {len(d.val)} val, {d.num_classes} classes), "
              f"{distributed.describe(self.env, self.device, self.model)} {self.parts.precision.describe()}"
              f"{', compiled' if self.fit_step.compiled is not None else ''}, {self._length()} -> {self.out}")
        if mixes(self.recipe.augment):
            print("note: mixup/cutmix on: train top1 is counted against each image's dominant label")
        p = self.progress
        if self.opts.resume and (p.step >= self.total_steps or p.epoch >= self.epochs):
            print(f"resume: the run in {self.out} is complete (step {p.step} of {self.total_steps}, epoch {p.epoch} "
                  f"of {self.epochs}); nothing left to train. Raise train.epochs or train.iterations to train on, "
                  "or give another --out for a new run")

    def _length(self) -> str:
        """The steps the run will take: whole epochs, or train.iterations cutting them short."""
        epochs, steps = _count(self.epochs, "epoch"), _count(self.steps_per_epoch, "step")
        if self.total_steps < self.epochs * self.steps_per_epoch:
            return f"{_count(self.total_steps, 'step')} (train.iterations; {epochs} of {steps})"
        return f"{epochs} x {steps}"

    def _begin_epoch(self) -> tuple[tqdm, float, int, float]:
        """The epoch's remaining batches (a progress bar over them), its start time,
        images seen and learning rate."""
        p = self.progress
        self.model.train()
        self.skipped_before_epoch = len(self.guards.skipped)
        if p.epoch_step == 0:
            p.meter = Meter((1,))
        self.sampler.set_epoch(p.epoch, p.epoch_step * self.batch)
        if self.recipe.data.progressive:  # before the epoch's workers start (not persistent then)
            self.data.train.transform.set_size(progressive_size(self.recipe.data, p.epoch))
        self.guards.begin_epoch(self.sampler.per_rank)
        if not (self.state.rng_restored and p.epoch_step):  # mid-epoch: the checkpoint's own RNG state goes on
            distributed.reseed_rank(self.env, self.recipe.train.seed, p.epoch, p.epoch_step)
        self.state.rng_restored = False
        bar = tqdm(ahead_to_device(self.train_loader, self.device), desc=f"epoch {p.epoch + 1}/{self.epochs}",
                   leave=False, initial=p.epoch_step, total=self.steps_per_epoch,
                   disable=None if self.opts.progress else True, dynamic_ncols=True)
        return bar, time.perf_counter(), 0, self.schedule.lr_at(p.step)

    def _end_epoch(self, log: RunLog, lr: float, seen: int, elapsed: float) -> dict[str, Any]:
        """Count the epoch over every process, validate when due, log, save, print."""
        p = self.progress
        meter = collectives.reduce_meter(p.meter, self.env, self.device)  # every process's samples
        record = {"train_loss": meter.loss, "train_top1": meter.accuracy(1), "lr": lr,
                  "images_per_s": seen * self.env.world / max(elapsed, 1e-9), "epoch_time_s": elapsed}
        if mixes(self.recipe.augment):  # mixed targets: train_top1 counts each row's larger share
            record["train_top1_target"] = "dominant"
        # train.iterations can end the run inside an epoch: that epoch stays open (its
        # position kept), so a resume with more iterations finishes it rather than
        # finding the run "complete". Its record carries the steps it got.
        partial = p.epoch_step < self.steps_per_epoch
        if partial:
            record["epoch_steps"] = p.epoch_step
        else:
            p.epoch, p.epoch_step = p.epoch + 1, 0
        last_epoch = partial or p.epoch == self.epochs or p.step >= self.total_steps
        if p.epoch % self.recipe.train.eval_every == 0 or last_epoch:
            record.update(self.validate())
        top1 = record.get("val_top1")
        improved = self.val_loader is None  # nothing to compare: best is the latest
        if top1 is not None:
            self.schedule.observe(top1)
            improved = p.best_top1 is None or top1 > p.best_top1
            p.best_top1 = top1 if improved else p.best_top1
        p.amp_skipped = int(p.amp_skipped)
        # the data's kind and classes: `cnntrain runs` lays the paper's number beside its own data only
        record = {"epoch": p.epoch + partial, "step": p.step, **record, "data": {"kind": self.data.kind,
                                                                      "classes": self.data.num_classes},
                  "skipped": len(self.guards.skipped) - self.skipped_before_epoch,
                  "nonfinite_skipped": p.nonfinite_skipped, "amp_skipped": p.amp_skipped}
        log.epoch(record)  # before the checkpoint: a kill in between re-runs and rewrites it
        self._save(improved)
        print(epoch_line(record, self.epochs, self._ks()[0][-1]))
        if self._stop_requested():
            raise self._stopped(f"at the end of epoch {p.epoch}")
        return record

    def _ks(self) -> tuple[tuple[int, ...], str | None]:
        """The top-K measured: eval.topk clipped to the class count (a 2-class run has no top-5)."""
        return accuracy_ks(self.recipe.eval.topk, self.data.num_classes)

    def _show(self, bar, lr: float, images_per_s: float) -> None:
        """The progress bar's figures: one read of the meter (rank 0 with a bar only)."""
        now = self.progress.meter.result()
        bar.set_postfix(loss=f"{now['loss']:.3f}", top1=f"{now['top1']:.1f}", lr=f"{lr:.3g}",
                        ips=f"{images_per_s:.0f}", refresh=False)

    def validate(self) -> dict[str, Any]:
        if self.val_loader is None:
            return {}
        ks = self._ks()[0]
        ema = self.parts.ema
        # The bare model, outside DDP (no gradient sync) and DataParallel: the fp32 head is
        # patched on the module, and DataParallel's replicas would copy that patch and run
        # the lead GPU's head (--strategy dp validates on the lead GPU).
        model = ema.module if ema is not None else unwrap(self.model)
        # The classifier in fp32, as `cnntrain eval` computes it: best.pt is chosen on the
        # same logits the paper comparison later reads.
        with fp32_head_during(model, self.data.num_classes):
            (meter,), skipped = evaluate([model], self.val_loader, [self.parts.prep], self.device,
                                         self.parts.precision, ks, progress=self.opts.progress)
        self.guards.note_skipped(skipped, training=False)
        self.watchdog.beat()
        meter = collectives.reduce_meter(meter, self.env, self.device)  # each sample once, over all shards
        return {f"val_{k}": v for k, v in meter.result().items()}


def fit(recipe: Recipe, opts: FitOptions) -> dict[str, Any]:
    result = Trainer(recipe, opts).run()
    distributed.teardown()  # not on errors: the process is ending, and peers must see its error first
    return result


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
