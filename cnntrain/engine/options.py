"""The options each command hands the engine, as dataclasses: what crosses the CLI/engine
boundary, with every flag checked once, here, whoever builds the options (the CLI, a
test, a notebook)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cnntrain.errors import CnnTrainError
from cnntrain.output import output_folder

SPLITS = ("val", "train")
COMBINES = ("prob", "logit")


def _at_least(minimum: int, **flags: int | None) -> None:
    for name, value in flags.items():
        if value is not None and value < minimum:
            raise CnnTrainError(f"--{name.replace('_', '-')} {value}: give at least {minimum}")


def parse_scales(text: str | None) -> list[int] | None:
    """``--scales 256,384,512`` -> [256, 384, 512]."""
    if text is None:
        return None
    try:
        scales = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CnnTrainError(f"--scales {text!r}: expected integers, e.g. 256,384,512") from None
    return scales  # EvalOptions checks that they are positive (for the Python API too)


def parse_seeds(text: str) -> list[int]:
    """``fit --seeds 0,1,2`` -> [0, 1, 2]: one run per seed."""
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CnnTrainError(f"--seeds {text!r}: expected integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise CnnTrainError(f"--seeds {text!r}: give distinct non-negative seeds, e.g. 0,1,2")
    return seeds


@dataclass
class FitOptions:
    out: Path
    data: str | None = None
    device: str = "auto"
    workers: int | None = None
    resume: str | None = None  # "auto" or a checkpoint path
    progress: bool = True
    strategy: str = "ddp"  # "dp": torch.nn.DataParallel over all visible GPUs in one process
    overwrite: bool = False  # move a run already in `out` aside instead of refusing
    resume_force: bool = False  # resume although the recipe differs in keys that change the result

    def __post_init__(self) -> None:
        _at_least(0, workers=self.workers)  # --strategy and --nproc: launch.check_launch
        if self.resume is not None and self.overwrite:
            raise CnnTrainError("--resume continues the run in --out and --overwrite moves it aside; give one")


def _check_npz(flag: str, path: str | None) -> None:
    if path is not None and not str(path).endswith(".npz"):
        raise CnnTrainError(f"{flag} {path}: give a file name ending in .npz")


@dataclass(kw_only=True)
class ViewOptions:
    """What evaluation and ensembling share: the data, how it is viewed and counted, and
    where it runs."""

    data: str | None = None
    topk: int | None = None  # None: the recipe's eval.topk
    crops: int | None = None  # None: the recipe's eval.crops
    device: str = "auto"
    workers: int | None = None
    batch_size: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.crops not in (None, 1, 10):
            raise CnnTrainError(f"--crops {self.crops}: use 1 or 10")
        if self.topk is not None and self.topk < 1:
            raise CnnTrainError("--topk must be at least 1")
        _at_least(0, workers=self.workers)
        _at_least(1, batch_size=self.batch_size)


@dataclass(kw_only=True)
class EvalOptions(ViewOptions):
    checkpoint: str
    split: str = "val"
    scales: list[int] | None = None  # None: the recipe's eval.scales (with a protocol: its scales)
    nproc: int = 1
    protocol: str | None = None  # a test-protocol preset (cnntrain.data.protocols)
    report: str | None = None  # folder for per_class.csv, confusion/calibration charts, report.md
    save_logits: str | None = None  # .npz of logits, probabilities, labels, sample ids, classes

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_npz("--save-logits", self.save_logits)
        if self.report:  # before any data work: a long evaluation must not end in "File exists"
            output_folder(self.report, "--report", create=False)
        if (self.report or self.save_logits) and self.nproc > 1:
            raise CnnTrainError("--report and --save-logits read every image in one process; drop --nproc")
        if self.protocol is not None and self.crops is not None:
            raise CnnTrainError(f"--protocol {self.protocol} and --crops {self.crops}: the protocol sets the crops; "
                                "give one of them")
        if self.split not in SPLITS:
            raise CnnTrainError(f"--split {self.split!r}: use val or train")
        if self.scales is not None and any(v <= 0 for v in self.scales):
            raise CnnTrainError(f"--scales {','.join(map(str, self.scales))}: scales must be positive")
        _at_least(1, nproc=self.nproc)


@dataclass(kw_only=True)
class EnsembleOptions(ViewOptions):
    checkpoints: list[str] = field(default_factory=list)
    combine: str = "prob"
    report: str | None = None  # folder for the ensemble's report (engine.report)
    saved: bool = False  # the checkpoints are .npz files of saved outputs (`ensemble --logits`)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.report:  # before any data work: a long evaluation must not end in "File exists"
            output_folder(self.report, "--report", create=False)
        if len(self.checkpoints) < 2:
            raise CnnTrainError(f"an ensemble needs at least two {'.npz files' if self.saved else 'checkpoints'}")
        for path in self.checkpoints if self.saved else []:
            _check_npz("--logits", path)
        if self.saved and self.data is not None:
            raise CnnTrainError("--data with --logits: saved outputs are combined without data; drop --data")
        if self.combine not in COMBINES:
            raise CnnTrainError(f"--combine {self.combine!r}: use prob or logit")


@dataclass(kw_only=True)
class BenchDataOptions:
    root: str
    recipe: str | None = None  # None: resnet50 on a folder, resnet20 on CIFAR
    workers: int | None = None
    batches: int = 20
    batch_size: int = 64
    warmup: int = 3
    repeats: int = 2
    device: str = "auto"

    def __post_init__(self) -> None:
        _at_least(1, batches=self.batches, batch_size=self.batch_size, repeats=self.repeats)
        _at_least(0, warmup=self.warmup, workers=self.workers)


@dataclass(kw_only=True)
class BenchDecodeOptions:
    root: str
    count: int = 200
    repeats: int = 3

    def __post_init__(self) -> None:
        _at_least(1, count=self.count, repeats=self.repeats)


@dataclass(kw_only=True)
class BenchTrainOptions:
    recipe: str
    steps: int = 10
    batch_size: int | None = None
    device: str = "auto"
    overrides: list[str] = field(default_factory=list)
    warmup: int = 3
    repeats: int = 3
    compile: bool = False

    def __post_init__(self) -> None:
        _at_least(1, steps=self.steps, repeats=self.repeats, batch_size=self.batch_size)
        _at_least(0, warmup=self.warmup)
