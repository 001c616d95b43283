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

from cnntrain.data import build_data, recorded
from cnntrain.data.protocols import get_protocol, protocol_scales, protocol_transform
from cnntrain.engine import distributed
from cnntrain.engine.dense import DenseScorer, fully_convolutional
from cnntrain.engine.evaluate import finish, fp32_head, load_member, measure
from cnntrain.engine.options import EvalOptions
from cnntrain.engine.paperline import accuracy_text, distinct_views, paper_lines, views_text


def _scorer(model, meta, protocol, scales, size):
    """The model the evaluator runs: the network itself for crops, or its dense form."""
    if not protocol.dense:
        return model, 0
    dense = DenseScorer(fully_convolutional(model, meta["arch"]), scales, protocol.flips, size)
    return fp32_head(dense, len(meta["classes"])), len(scales) * (2 if protocol.flips else 1)


def eval_protocol(opts: EvalOptions) -> dict[str, Any]:
    path, split = opts.checkpoint, opts.split
    protocol = get_protocol(opts.protocol)
    # A dense protocol scores whole images at several scales (photos: each its own size),
    # so cuDNN's per-shape autotuning would search again and again.
    env, dev = distributed.setup(opts.device, fixed_shapes=not protocol.dense)
    member = load_member(path, dev)
    model, meta, recipe, _ = member
    size = recipe.data.eval_size or recipe.data.train_size  # the recipe's test crop (train low, test high)
    scales, chosen = protocol_scales(protocol, recipe, opts.scales)
    transform = protocol_transform(protocol, size, scales)
    bundle = build_data(recipe, opts.data if opts.data is not None else recorded(meta.get("data")), train=False,
                        split=split, eval_transform=transform)
    batch = opts.batch_size or recipe.eval.batch_size or recipe.optim.batch_size
    if protocol.dense and bundle.kind == "folder":
        batch = 1  # photos of different sizes: each is scored whole
    scorer, views = _scorer(model, meta, protocol, scales, size)
    m = measure(opts, env, dev, member, bundle, batch, scorer=scorer, views=views)
    distinct = distinct_views(bundle.val, transform) if env.is_main else None
    m.result.update(protocol=protocol.name, protocol_paper=protocol.paper, scales=scales, views=transform.views,
                    distinct_views=distinct)
    measured = f"{protocol.name}, scales {'/'.join(map(str, scales))}"
    print(f"{path}  {meta['arch']}  {split}  {m.result['samples']} images  protocol {protocol.name} "
          f"({protocol.paper}): {views_text(transform.views, distinct)}; scales {'/'.join(map(str, scales))} "
          f"({chosen})")
    print(f"{accuracy_text(m.result, m.ks)}  loss {m.result['loss']:.4f}")
    return finish(m, opts, bundle, member, paper_lines(recipe, bundle, protocol.name, measured))
