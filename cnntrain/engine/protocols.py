"""``cnntrain eval CKPT --protocol NAME``: a checkpoint measured with one of the papers'
test protocols (the presets of :mod:`cnntrain.data.protocols`), printed with the views it
averaged per image (and how many of them were distinct) and the paper's number for that
protocol beside it when there is one.

Crop protocols average the softmax over a stack of crops (the evaluator's multi-crop
path); dense protocols run the fully-convolutional form of the network
(:mod:`cnntrain.engine.dense`) on the whole image at each scale. An image folder's photos
differ in size, so a dense protocol reads them one image per batch; fixed-size datasets
(digits, CIFAR, synthetic) keep the batch size.
"""
from __future__ import annotations

from typing import Any

from cnntrain.data import BatchPrep, build_data, default_workers, recorded, val_loader
from cnntrain.data.protocols import get_protocol, protocol_scales, protocol_transform
from cnntrain.engine import collectives, distributed
from cnntrain.engine.dense import DenseScorer, fully_convolutional
from cnntrain.engine.evaluate import _check_classes, evaluate, fp32_head, load_member
from cnntrain.engine.options import EvalOptions
from cnntrain.engine.outputs import Collector
from cnntrain.engine.report import eval_outputs
from cnntrain.errors import CnnTrainError
from cnntrain.engine.paperline import accuracy_ks, accuracy_text, distinct_views, paper_lines, views_text


def _scorer(model, meta, protocol, scales, size):
    """The model the evaluator runs: the network itself for crops, or its dense form."""
    if not protocol.dense:
        return model, 0
    dense = DenseScorer(fully_convolutional(model, meta["arch"]), scales, protocol.flips, size)
    return fp32_head(dense, len(meta["classes"])), len(scales) * (2 if protocol.flips else 1)


def eval_protocol(opts: EvalOptions) -> dict[str, Any]:
    path, split = opts.checkpoint, opts.split
    env, dev = distributed.setup(opts.device)
    model, meta, recipe, precision = load_member(path, dev)
    protocol = get_protocol(opts.protocol)
    size = recipe.data.train_size
    scales, chosen = protocol_scales(protocol, recipe, opts.scales)
    transform = protocol_transform(protocol, size, scales)
    bundle = build_data(recipe, opts.data if opts.data is not None else recorded(meta.get("data")), train=False,
                        split=split, eval_transform=transform)
    _check_classes(path, meta, bundle)
    ks, k_note = accuracy_ks(opts.topk or recipe.eval.topk, bundle.num_classes)
    batch = opts.batch_size or recipe.eval.batch_size or recipe.optim.batch_size
    if protocol.dense and bundle.kind == "folder":
        batch = 1  # photos of different sizes: each is scored whole
    workers = default_workers(bundle.kind, env.local_world) if opts.workers is None else opts.workers
    loader = val_loader(bundle.val, batch, env.rank, env.world, workers, dev.type == "cuda")
    prep = BatchPrep(tuple(meta["mean"]), tuple(meta["std"]), dev, precision.channels_last)
    scorer, views = _scorer(model, meta, protocol, scales, size)
    sink = Collector() if opts.report or opts.save_logits else None
    if sink is not None and env.world > 1:
        raise CnnTrainError("--report and --save-logits read every image in one process; drop --nproc/torchrun")
    (meter,), skipped = evaluate([scorer], loader, [prep], dev, precision, ks,
                                 progress=opts.progress and env.is_main, views=views, sink=sink)
    meter = collectives.reduce_meter(meter, env, dev)
    (n_skipped,) = collectives.sum_ints([len(skipped)], env, dev)
    distinct = distinct_views(bundle.val, transform) if env.is_main else None
    result = meter.result()
    result.update(checkpoint=str(path), arch=meta["arch"], split=split, protocol=protocol.name,
                  protocol_paper=protocol.paper, scales=scales, views=transform.views, distinct_views=distinct,
                  skipped=n_skipped, paper=dict(recipe.paper.reported))
    if env.enabled:
        result["processes"] = env.world
    measured = f"{protocol.name}, scales {'/'.join(map(str, scales))}"
    print(f"{path}  {meta['arch']}  {split}  {result['samples']} images  protocol {protocol.name} "
          f"({protocol.paper}): {views_text(transform.views, distinct)}; scales {'/'.join(map(str, scales))} "
          f"({chosen})")
    print(f"{accuracy_text(result, ks)}  loss {result['loss']:.4f}")
    for line in ([k_note] if k_note else []) + paper_lines(recipe, bundle, protocol.name, measured):
        print(line)
    if n_skipped:
        print(f"skipped {n_skipped} unreadable file(s)")
    if sink is not None:  # the per-image scores are the protocol's averages
        result.update(eval_outputs(sink, opts, bundle.val, skipped, [(path, meta, recipe)], result, ks[-1]))
    return result

