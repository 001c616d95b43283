"""Recipes: the typed schema of a training configuration, its TOML loading, ``base``
inheritance, ``--set`` overrides and validation.

A recipe is data. Loading one parses TOML and nothing else; no code in it ever runs.
Every key is checked against the schema below, and an unknown key, a wrong type or a
value outside its choices is a :class:`CnnTrainError` naming the file (or ``--set``),
the key and the nearest valid key.
"""
from __future__ import annotations

import copy
import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from cnntrain.errors import CnnTrainError, did_you_mean
from cnntrain.models import check_model_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def _choice(default: Any, *choices: Any) -> Any:
    return field(default=default, metadata={"choices": choices})


@dataclass
class PaperSection:
    """Where the configuration comes from and what its authors reported."""

    title: str = ""
    cite: str = ""
    url: str = ""
    protocol: str = ""  # how the reported errors were measured (crops, scales, ensemble)
    reported: dict[str, float] = field(default_factory=dict)  # e.g. top1_err, top5_err
    # True once every number in `reported` was checked against its source (the table or
    # section `protocol` names). A recipe that sets `reported` without restating this
    # does not inherit its base's `verified = true`: new numbers start unverified.
    verified: bool = False
    # Which of `reported` each test protocol measured: preset name (`cnntrain eval
    # --protocol list`) -> reported keys, e.g. { "10crop" = ["top1_err", "top5_err"] }.
    # `eval` prints a number only beside a run of its own protocol. Where the paper does
    # not say how it tested, `unstated = [...]` says so: those numbers are printed beside
    # the recipe's own evaluation (plain `eval`) only, marked "protocol not stated by the
    # paper". Like `verified`, a recipe that replaces `reported` without restating this
    # starts with none.
    eval_protocols: dict[str, list[str]] = field(default_factory=dict)


# The presets of cnntrain.data.protocols (which checks that its table matches this list).
EVAL_PROTOCOLS = ("center", "center-flip", "10crop", "vgg-dense", "vgg-multicrop", "googlenet-144",
                  "resnet-fcn-multiscale")
UNSTATED = "unstated"  # paper.eval_protocols key for numbers whose paper states no test protocol


@dataclass
class ModelSection:
    arch: str = ""
    dropout: float | None = None
    options: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of the builder
    # starting weights: a checkpoint, a .pth/.pt state dict, a .safetensors file, or
    # "torchvision:WEIGHTS" (e.g. "torchvision:IMAGENET1K_V1"); "" = the paper's random init
    init: str = ""


DATASETS = ("digits", "synthetic", "cifar10", "cifar100", "imagenet")


@dataclass
class DataSection:
    dataset: str = _choice("imagenet", *DATASETS)
    train_size: int = 224  # side of the square training crop, and of the evaluation crop
    eval_resize: int = 256  # shorter side before the centre crop at evaluation; 0 = none
    eval_size: int = 0  # side of the evaluation crop; 0 = train_size (train low, test high: set it)
    # Progressive resizing (FFCV): the training crop side rises linearly from
    # progressive[0] to progressive[1] between epochs progressive_epochs[0] and [1]
    # (0-based), rounded to a multiple of progressive_multiple; [] = off.
    progressive: list[int] = field(default_factory=list)
    progressive_epochs: list[int] = field(default_factory=list)
    progressive_multiple: int = 32
    num_classes: int | None = None  # defaults to the data's class count
    workers: int | None = None  # loader processes; None picks from the cores and the dataset
    strict: bool = False  # stop at the first unreadable image instead of skipping it
    # The data this recipe trains on, as fit recorded it: an absolute path, or a bundled
    # name ("digits", "synthetic"); used when --data is not given. Unset: data.dataset's.
    root: str | None = None
    # Images declaring more pixels than this in their header are skipped undecoded (a
    # decompression bomb); default Pillow's own limit, Image.MAX_IMAGE_PIXELS.
    max_pixels: int = 89_478_485
    max_bad_fraction: float = 0.01  # stop once more than this share of an epoch's images was unreadable
    synthetic_train_samples: int = 256
    synthetic_val_samples: int = 64
    # ImageNet's flat val/ folder read in place: LOC_val_solution.csv or the devkit's
    # data/ILSVRC2012_validation_ground_truth.txt (see `cnntrain data imagenet-val`)
    val_labels: str = ""
    # Hold the training set on the training device as uint8 and build each batch there
    # (data/resident.py): CIFAR, digits, synthetic with a pad/none crop. auto: on when it
    # takes under a quarter of the device's free memory and the view allows it.
    on_device: str = _choice("auto", "auto", "on", "off")
    # Where JPEGs of a folder dataset are decoded: gpu = nvJPEG in the training process
    # (data/gpudecode.py), cpu = in the loader workers; auto: gpu on CUDA runs.
    decode: str = _choice("auto", "auto", "cpu", "gpu")


@dataclass
class AugmentSection:
    crop: str = _choice("none", "none", "pad", "random", "resized", "scale_jitter")
    pad: int = 4  # "pad": zero padding before a random crop (CIFAR)
    resize: int = 256  # "random": shorter side before the random crop (AlexNet)
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # "resized": area range
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])  # "resized": aspect range
    # "scale_jitter": shorter side S drawn uniformly (integer) from [lo, hi], then a random crop
    scale_range: list[int] = field(default_factory=lambda: [256, 512])
    # photometric distortion: random factors in [1-x, 1+x] for brightness, contrast, saturation
    color_jitter: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    hflip: bool = False
    pca_lighting: float = 0.0  # AlexNet's colour noise: std of the eigenvector weights
    # Automatic augmentation policies (torchvision.transforms.v2), on uint8 in the workers
    auto: str = _choice("none", "none", "randaugment", "trivialaugment", "autoaugment")
    auto_ops: int = 2  # randaugment: N, operations per image
    auto_magnitude: int = 9  # randaugment: M, magnitude (of 31 bins)
    random_erasing: float = 0.0  # probability of erasing one random box (to the dataset mean)
    # Batch mixing on the training device: Beta(alpha, alpha) for mixup / cutmix; 0 = off
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0  # probability that a batch is mixed at all
    mix_switch_prob: float = 0.5  # with both on: probability of cutmix rather than mixup


@dataclass
class OptimSection:
    name: str = _choice("sgd", "sgd", "adamw", "rmsprop", "lamb", "lars")
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    batch_size: int = 128
    alpha: float = 0.99  # rmsprop: decay of the squared-gradient average (Inception-v4: 0.9)
    eps: float = 1e-8  # rmsprop / adamw / lamb: denominator epsilon (Inception-v4's RMSProp: 1.0)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw / lamb moment decays
    trust_coefficient: float = 0.001  # lars: eta of the layer-wise rate (You et al. 2017)
    # weight decay of every normalisation-layer parameter (gamma and beta) and of the
    # other layers' biases; None = weight_decay
    norm_weight_decay: float | None = None
    bias_weight_decay: float | None = None
    # learning-rate multipliers by module-name prefix, e.g. { fc = 10.0 } (longest prefix wins)
    lr_mult: dict[str, float] = field(default_factory=dict)


@dataclass
class ScheduleSection:
    # triangle: linear warm-up to the peak at `warmup`, then linear to min_lr at the end (FFCV)
    name: str = _choice("constant", "constant", "step", "multistep", "plateau", "cosine", "poly", "triangle")
    unit: str = _choice("epoch", "epoch", "iteration")  # what step_size, milestones, warmup count
    step_size: int = 30
    milestones: list[int] = field(default_factory=list)
    factor: float = 0.1  # multiplier at each step, milestone or plateau
    patience: int = 5  # plateau: evaluations without improvement of val top-1
    threshold: float = 1e-4  # plateau: relative improvement that counts
    min_lr: float = 0.0
    power: float = 1.0  # poly: lr = base * (1 - progress) ** power (SqueezeNet: linear, power 1)
    warmup: int = 0  # length of the warm-up, in `unit`
    warmup_mode: str = _choice("linear", "linear", "constant")
    warmup_factor: float = 0.1  # lr multiplier at the start of (or during a constant) warm-up


@dataclass
class TrainSection:
    epochs: int | None = None
    iterations: int | None = None  # when both are set, training stops at whichever comes first
    seed: int = 0
    label_smoothing: float = 0.0
    amp: str = _choice("auto", "auto", "off", "bf16", "fp16")  # auto: bf16 on CUDA, off on CPU
    channels_last: str = _choice("auto", "auto", "on", "off")  # auto: see engine/device.py
    eval_every: int = 1  # epochs between validations
    save_every_steps: int = 0  # also write last.pt every N optimisation steps (0: per epoch only)
    on_nonfinite: str = _choice("stop", "stop", "skip")  # a NaN/inf loss stops the run, or skips the step
    max_nonfinite_steps: int = 10  # with "skip": stop once this many steps were skipped
    deterministic: bool = False  # torch.use_deterministic_algorithms (bitwise-repeatable runs on GPU)
    accumulate: int = 1  # micro-batches per optimiser step (optim.batch_size stays the global batch)
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA, more than one process)
    dist_timeout: int = 1800  # seconds a process waits in a collective before the job fails
    aux_weight: float = 0.3  # weight of auxiliary-head losses (GoogLeNet: 0.3)
    ema_decay: float = 0.0  # Polyak/EMA averaging of weights for evaluation and best.pt; 0 = off
    loss: str = _choice("ce", "ce", "bce")  # bce: binary cross-entropy on one-hot / mixed targets
    clip_grad_norm: float = 0.0  # clip the global gradient norm to this (after fp16 unscaling); 0 = off
    repeated_aug: int = 1  # K: each sample drawn K times (on different processes), epoch length kept
    # knowledge distillation: {teachers = ["a/best.pt", ...], weight = 1.0, temperature = 1.0}
    distill: dict[str, Any] = field(default_factory=dict)
    # module-name prefixes left untouched by training (their BatchNorm statistics too), or
    # ["backbone"] for everything but the classifier; a lone string is a one-item list
    freeze: list[str] = field(default_factory=list, metadata={"lone_item": True})
    # torch.compile the training model; auto: on for CUDA runs of at least 500 steps
    # (compiling costs a minute or so, which only a longer run wins back)
    compile: str = _choice("auto", "auto", "on", "off")
    # Zeiler & Fergus 2014 Sect. 3: after each step, a first-layer filter whose RMS exceeds
    # this radius is scaled back to it (the paper: 1e-1); 0 = off
    renorm_first_conv: float = 0.0
    keep_checkpoints: int = 2  # step checkpoints kept: last.pt, prev.pt, prev2.pt, ... (one can be mid-write)
    watchdog: float = 1800.0  # seconds without a finished step before the stacks are dumped and the run exits; 0 = off
    requeue: bool = False  # under SLURM (SLURM_JOB_ID set): SIGUSR1 saves, then `scontrol requeue`s the job


@dataclass
class EvalSection:
    batch_size: int | None = None  # defaults to optim.batch_size
    topk: int = 5
    crops: int = _choice(1, 1, 10)  # 10: four corners and centre, and their flips
    scales: list[int] = field(default_factory=list)  # test scales Q (shorter side); softmax averaged
    flip: bool = False  # with crops = 1: also the mirrored view, softmax averaged (FFCV's test-time flip)


SECTIONS: dict[str, type] = {
    "paper": PaperSection,
    "model": ModelSection,
    "data": DataSection,
    "augment": AugmentSection,
    "optim": OptimSection,
    "schedule": ScheduleSection,
    "train": TrainSection,
    "eval": EvalSection,
}
TOP_LEVEL = ("base", "name")


@dataclass
class Recipe:
    """A fully resolved recipe."""

    name: str
    source: str
    paper: PaperSection = field(default_factory=PaperSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict, ``None`` values dropped (TOML has no null)."""
        out: dict[str, Any] = {"name": self.name}
        for section in SECTIONS:
            values = dataclasses.asdict(getattr(self, section))
            out[section] = {k: v for k, v in values.items() if v is not None}
        return out

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


# --------------------------------------------------------------------------- lookup


def recipe_dirs() -> list[Path]:
    """Folders searched for recipes by name: the installed copy, then the source tree."""
    here = Path(__file__).resolve().parent
    return [d for d in (here / "recipes", here.parent / "recipes") if d.is_dir()]


def recipe_names() -> list[str]:
    names: set[str] = set()
    for folder in recipe_dirs():
        names.update(p.stem for p in folder.glob("*.toml"))
    return sorted(names)


def find_recipe(name_or_path: str, relative_to: Path | None = None) -> Path:
    """Resolve a recipe name (``resnet50``) or a path to a TOML file."""
    candidate = Path(name_or_path)
    if relative_to is not None and not candidate.is_absolute():
        if (relative_to / candidate).is_file():
            return relative_to / candidate
    if candidate.suffix == ".toml" or candidate.is_file():
        if candidate.is_file():
            return candidate
        raise CnnTrainError(f"recipe file {name_or_path} does not exist")
    for folder in recipe_dirs():
        path = folder / f"{name_or_path}.toml"
        if path.is_file():
            return path
    raise CnnTrainError(
        f'unknown recipe "{name_or_path}"{did_you_mean(name_or_path, recipe_names())}; '
        "`cnntrain recipes` lists them, or pass a path to a .toml file"
    )


# --------------------------------------------------------------------------- validation


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_type_ok(value, h) for h in typing.get_args(hint) if h is not type(None))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        _, item = typing.get_args(hint)
        return isinstance(value, dict) and all(_type_ok(v, item) for v in value.values())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    text = str(hint).replace("typing.", "")
    return getattr(hint, "__name__", text) if typing.get_origin(hint) is None else text


def _check_raw(raw: dict[str, Any], origin: str) -> None:
    """Check keys, types and choices of one recipe file (or of the overrides)."""
    for key, value in raw.items():
        if key in TOP_LEVEL:
            if not isinstance(value, str):
                raise CnnTrainError(f"{origin}: key {key!r} must be a string, got {value!r}")
            continue
        if key not in SECTIONS:
            raise CnnTrainError(
                f"{origin}: unknown section [{key}]{did_you_mean(key, [*SECTIONS, *TOP_LEVEL])}; "
                f"valid sections: {', '.join(SECTIONS)}"
            )
        if not isinstance(value, dict):
            raise CnnTrainError(f"{origin}: [{key}] must be a table of keys, got {value!r}")
        cls = SECTIONS[key]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        for sub, sub_value in value.items():
            dotted = f"{key}.{sub}"
            if sub not in fields:
                raise CnnTrainError(
                    f"{origin}: unknown key {dotted}{did_you_mean(sub, fields)}; "
                    f"valid keys of [{key}]: {', '.join(fields)}"
                )
            if fields[sub].metadata.get("lone_item") and isinstance(sub_value, str):
                value[sub] = sub_value = [sub_value]  # freeze = "backbone" means ["backbone"]
            if not _type_ok(sub_value, hints[sub]):
                raise CnnTrainError(
                    f"{origin}: {dotted} must be {_type_name(hints[sub])}, "
                    f"got {sub_value!r} ({type(sub_value).__name__})"
                )
            choices = fields[sub].metadata.get("choices")
            if choices and sub_value not in choices:
                raise CnnTrainError(
                    f"{origin}: {dotted} = {sub_value!r} is not one of "
                    f"{', '.join(map(repr, choices))}{did_you_mean(str(sub_value), map(str, choices))}"
                )


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; ``paper.reported`` and ``paper.eval_protocols`` are
    replaced whole, not merged, and replacing ``reported`` without restating
    ``paper.verified`` (``paper.eval_protocols``) resets it to false (to none)."""
    out = _merge_tables(base, over)
    paper = over.get("paper")
    if isinstance(paper, dict) and "reported" in paper:
        if "verified" not in paper:
            out["paper"]["verified"] = False
        if "eval_protocols" not in paper:
            out["paper"].pop("eval_protocols", None)
    return out


def _merge_tables(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("reported", "eval_protocols"):
            out[key] = _merge_tables(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise CnnTrainError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise CnnTrainError(f"cannot read recipe {path}: {exc.strerror}") from None


def _load_raw(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in chain:
        loop = " -> ".join(p.name for p in (*chain, path))
        raise CnnTrainError(f"recipe inheritance loops: {loop}")
    raw = _read_toml(path)
    _check_raw(raw, str(path))
    base_name = raw.pop("base", None)
    if base_name is None:
        return raw
    base_path = find_recipe(base_name, relative_to=path.parent)
    return _merge(_load_raw(base_path, (*chain, path)), raw)


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """``optim.lr=0.05`` -> (["optim", "lr"], 0.05). Values are TOML, or else plain strings."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise CnnTrainError(
            f"malformed --set {text!r}: expected KEY=VALUE with a dotted key, "
            "e.g. --set optim.lr=0.05 or --set train.epochs=3"
        )
    value = value.strip()
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.split("."), parsed


def overrides_to_dict(overrides: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for text in overrides:
        parts, value = parse_override(text)
        if len(parts) < 2 and parts[0] not in TOP_LEVEL:
            raise CnnTrainError(
                f"--set {text!r}: the key needs its section, e.g. optim.{parts[0]}"
                f"{did_you_mean(parts[0], SECTIONS)}"
            )
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CnnTrainError(f"--set {text!r} conflicts with an earlier --set")
        node[parts[-1]] = value
    return out


# --------------------------------------------------------------------------- building


def _build(name: str, source: str, raw: dict[str, Any], label: str | None = None) -> Recipe:
    sections = {key: SECTIONS[key](**raw.get(key, {})) for key in SECTIONS}
    recipe = Recipe(name=raw.get("name", name), source=source, **sections)
    _check_consistency(recipe, label or source)
    return recipe


def _check_consistency(recipe: Recipe, where: str) -> None:
    if not recipe.model.arch:
        raise CnnTrainError(f"{where}: model.arch is required, e.g. arch = \"resnet50\"")
    check_model_name(recipe.model.arch, where=f"{where}: model.arch")
    train = recipe.train
    if train.epochs is None and train.iterations is None:
        raise CnnTrainError(f"{where}: set train.epochs or train.iterations")
    for key, value in (("train.epochs", train.epochs), ("train.iterations", train.iterations),
                       ("optim.batch_size", recipe.optim.batch_size), ("train.accumulate", train.accumulate),
                       ("train.dist_timeout", train.dist_timeout),
                       ("data.train_size", recipe.data.train_size)):
        if value is not None and value <= 0:
            raise CnnTrainError(f"{where}: {key} must be positive, got {value}")
    for key, value in (("train.save_every_steps", train.save_every_steps), ("train.watchdog", train.watchdog),
                       ("train.max_nonfinite_steps", train.max_nonfinite_steps), ("data.workers", recipe.data.workers),
                       ("augment.pad", recipe.augment.pad), ("train.label_smoothing", train.label_smoothing),
                       ("optim.weight_decay", recipe.optim.weight_decay),
                       ("optim.norm_weight_decay", recipe.optim.norm_weight_decay),
                       ("optim.bias_weight_decay", recipe.optim.bias_weight_decay)):
        if value is not None and value < 0:
            raise CnnTrainError(f"{where}: {key} must not be negative, got {value}")
    for key, value in (("train.keep_checkpoints", train.keep_checkpoints), ("train.eval_every", train.eval_every),
                       ("data.max_pixels", recipe.data.max_pixels), ("eval.batch_size", recipe.eval.batch_size),
                       ("data.synthetic_train_samples", recipe.data.synthetic_train_samples),
                       ("data.synthetic_val_samples", recipe.data.synthetic_val_samples)):
        if value is not None and value < 1:
            raise CnnTrainError(f"{where}: {key} must be at least 1, got {value}")
    _check_fraction(where, data__max_bad_fraction=recipe.data.max_bad_fraction)
    if recipe.optim.lr <= 0:
        raise CnnTrainError(f"{where}: optim.lr must be positive, got {recipe.optim.lr}")
    if recipe.schedule.name == "triangle" and (recipe.schedule.warmup <= 0 or recipe.schedule.warmup_mode != "linear"):
        raise CnnTrainError(f"{where}: schedule.name = \"triangle\" needs schedule.warmup > 0 (the peak) "
                            "and schedule.warmup_mode = \"linear\"")
    if recipe.schedule.name == "multistep" and not recipe.schedule.milestones:
        raise CnnTrainError(f"{where}: schedule.name = \"multistep\" needs schedule.milestones")
    if recipe.optim.batch_size % train.accumulate:
        raise CnnTrainError(
            f"{where}: optim.batch_size {recipe.optim.batch_size} is not divisible by train.accumulate "
            f"{train.accumulate}; the micro-batches must be equal"
        )
    lo_hi = recipe.augment.scale_range
    if recipe.augment.crop == "scale_jitter" and (
            len(lo_hi) != 2 or lo_hi[0] > lo_hi[1] or lo_hi[0] < recipe.data.train_size):
        raise CnnTrainError(f"{where}: augment.scale_range must be [lo, hi] with "
                            f"data.train_size <= lo <= hi, got {lo_hi}")
    if len(recipe.augment.color_jitter) != 3 or any(not 0 <= v < 1 for v in recipe.augment.color_jitter):
        raise CnnTrainError(f"{where}: augment.color_jitter must be [brightness, contrast, saturation] "
                            f"each in [0, 1), got {recipe.augment.color_jitter}")
    if not 0 <= recipe.train.ema_decay < 1:
        raise CnnTrainError(f"{where}: train.ema_decay must be in [0, 1), got {recipe.train.ema_decay}")
    if any(s < (recipe.data.eval_size or recipe.data.train_size) for s in recipe.eval.scales):
        raise CnnTrainError(f"{where}: eval.scales must each be at least data.train_size, got {recipe.eval.scales}")
    if recipe.eval.topk < 1:
        raise CnnTrainError(f"{where}: eval.topk must be at least 1")
    _check_procedures(recipe, where)
    bad_mult = {k: v for k, v in recipe.optim.lr_mult.items() if v < 0}
    if bad_mult:
        raise CnnTrainError(f"{where}: optim.lr_mult values must be >= 0, got {bad_mult}")
    if recipe.train.renorm_first_conv < 0:
        raise CnnTrainError(f"{where}: train.renorm_first_conv must be 0 (off) or a positive RMS radius, "
                            f"got {recipe.train.renorm_first_conv}")
    _check_eval_protocols(recipe.paper, where)


def _check_fraction(where: str, **values: float) -> None:
    for key, value in values.items():
        if not 0 <= value <= 1:
            raise CnnTrainError(f"{where}: {key.replace('__', '.')} must be in [0, 1], got {value}")


def _check_procedures(recipe: Recipe, where: str) -> None:
    """The later papers' procedures (mixing, erasing, sizes, distillation)."""
    aug, data, train = recipe.augment, recipe.data, recipe.train
    _check_fraction(where, augment__random_erasing=aug.random_erasing, augment__mix_prob=aug.mix_prob,
                    augment__mix_switch_prob=aug.mix_switch_prob)
    for key, value in (("augment.mixup", aug.mixup), ("augment.cutmix", aug.cutmix),
                       ("train.clip_grad_norm", train.clip_grad_norm), ("data.eval_size", data.eval_size)):
        if value < 0:
            raise CnnTrainError(f"{where}: {key} must be 0 (off) or positive, got {value}")
    if not 0 <= aug.auto_magnitude <= 30 or aug.auto_ops < 1:
        raise CnnTrainError(f"{where}: augment.auto_magnitude must be in [0, 30] and augment.auto_ops at "
                            f"least 1, got {aug.auto_magnitude} and {aug.auto_ops}")
    if train.repeated_aug < 1:
        raise CnnTrainError(f"{where}: train.repeated_aug must be at least 1 (1 = off), got {train.repeated_aug}")
    if len(recipe.optim.betas) != 2 or any(not 0 <= b < 1 for b in recipe.optim.betas):
        raise CnnTrainError(f"{where}: optim.betas must be [beta1, beta2] in [0, 1), got {recipe.optim.betas}")
    if data.progressive or data.progressive_epochs:
        sizes, epochs = data.progressive, data.progressive_epochs
        if len(sizes) != 2 or len(epochs) != 2 or min(sizes) < 1 or not 0 <= epochs[0] <= epochs[1]:
            raise CnnTrainError(f"{where}: data.progressive = [start_size, end_size] and data.progressive_epochs "
                                f"= [first, last] (0 <= first <= last) go together, got {sizes} and {epochs}")
        if data.progressive_multiple < 1:
            raise CnnTrainError(f"{where}: data.progressive_multiple must be at least 1")
    if train.distill:
        check_distill(train.distill, where)


DISTILL_KEYS = {"teachers": list, "weight": float, "temperature": float}


def check_distill(spec: dict[str, Any], where: str) -> None:
    """``train.distill``: a non-empty list of checkpoint paths, a weight >= 0, a temperature > 0."""
    for key, value in spec.items():
        if key not in DISTILL_KEYS:
            raise CnnTrainError(f"{where}: unknown key train.distill.{key}{did_you_mean(key, DISTILL_KEYS)}; "
                                f"valid keys: {', '.join(DISTILL_KEYS)}")
        if not _type_ok(value, list[str] if key == "teachers" else float):
            raise CnnTrainError(f"{where}: train.distill.{key} must be "
                                f"{'a list of checkpoint paths' if key == 'teachers' else 'a number'}, got {value!r}")
    if not spec.get("teachers"):
        raise CnnTrainError(f'{where}: train.distill needs teachers = ["path/to/best.pt", ...]')
    if spec.get("weight", 1.0) < 0:
        raise CnnTrainError(f"{where}: train.distill.weight must be >= 0, got {spec['weight']}")
    if spec.get("temperature", 1.0) <= 0:
        raise CnnTrainError(f"{where}: train.distill.temperature must be > 0, got {spec['temperature']}")


def _check_eval_protocols(paper: PaperSection, where: str) -> None:
    for name, keys in paper.eval_protocols.items():
        if name not in (*EVAL_PROTOCOLS, UNSTATED):
            raise CnnTrainError(f"{where}: paper.eval_protocols: {name!r} is not a protocol preset"
                                f"{did_you_mean(name, (*EVAL_PROTOCOLS, UNSTATED))}; presets: "
                                f"{', '.join(EVAL_PROTOCOLS)}, or {UNSTATED} where the paper states none")
        missing = [k for k in keys if k not in paper.reported]
        if missing:
            raise CnnTrainError(f"{where}: paper.eval_protocols.{name} names {', '.join(missing)}, "
                                f"not in paper.reported ({', '.join(paper.reported) or 'empty'})")


def load_recipe(name_or_path: str, overrides: list[str] | dict[str, Any] | None = None) -> Recipe:
    """Load a recipe by name or path, apply ``--set`` overrides, validate, resolve ``base``."""
    path = find_recipe(name_or_path)
    raw = _load_raw(path)
    if overrides:
        over = overrides_to_dict(overrides) if isinstance(overrides, list) else overrides
        _check_raw(over, "--set")
        raw = _merge(raw, over)
    name = raw.get("name", path.stem)
    label = f"{path} with --set {' '.join(overrides)}" if isinstance(overrides, list) and overrides else None
    return _build(name, str(path), raw, label)


def recipe_from_dict(raw: dict[str, Any], source: str = "checkpoint") -> Recipe:
    """Rebuild a recipe saved as a plain dict (in a checkpoint), validating it again."""
    raw = copy.deepcopy(raw)
    _check_raw(raw, source)
    return _build(raw.get("name", "recipe"), source, raw)
