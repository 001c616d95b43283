import pickle

import pytest
import torch

from cnntrain.data import build_data, collate, detect
from cnntrain.data.folder import Skipped
from cnntrain.data.transforms import EvalTransform, pca_lighting
from cnntrain.data.views import TrainTransform
from cnntrain.engine.metrics import Meter, topk_correct
from cnntrain.errors import CnnTrainError
from cnntrain.recipe import load_recipe
from tests.conftest import write_cifar10, write_cifar100, write_image_folder


def test_digits_fixed_split():
    bundle = build_data(load_recipe("lenet5"), None)
    assert (len(bundle.train), len(bundle.val)) == (1437, 360)
    img, label = bundle.val[0]
    assert img.shape == (1, 32, 32) and img.dtype == torch.uint8
    again = build_data(load_recipe("lenet5"), None)
    assert torch.equal(bundle.val.images, again.val.images)


def test_cifar10_official_files(tmp_path):
    root = write_cifar10(tmp_path, per_batch=6, test=4)
    assert detect(str(root), load_recipe("resnet20"))[0] == "cifar10"
    assert detect(str(root / "cifar-10-batches-py"), load_recipe("resnet20"))[0] == "cifar10"
    bundle = build_data(load_recipe("resnet20"), str(root))
    assert (len(bundle.train), len(bundle.val), bundle.num_classes) == (30, 4, 10)
    assert bundle.classes[0] == "airplane"
    img, _ = bundle.train[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.uint8
    # The reader keeps the official row layout: 1024 red, then green, then blue values.
    with open(root / "cifar-10-batches-py" / "test_batch", "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")
    first, label = bundle.val[0]
    assert torch.equal(first.flatten(), torch.from_numpy(raw[b"data"][0]))
    assert label == raw[b"labels"][0]


def test_cifar100_fine_labels(tmp_path):
    root = write_cifar100(tmp_path)
    bundle = build_data(load_recipe("resnet20"), str(root))
    assert bundle.kind == "cifar100" and bundle.num_classes == 100 and len(bundle.train) == 20


def test_damaged_and_malicious_cifar(tmp_path):
    root = write_cifar10(tmp_path / "a")
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CnnTrainError, match="data_batch_3 is damaged"):
        build_data(load_recipe("resnet20"), str(root))
    root = write_cifar10(tmp_path / "b")
    (root / "cifar-10-batches-py" / "data_batch_2").unlink()
    with pytest.raises(CnnTrainError, match="data_batch_2 is missing"):
        build_data(load_recipe("resnet20"), str(root))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    root = write_cifar10(tmp_path / "c")
    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as fh:
        pickle.dump({"data": Evil()}, fh)
    with pytest.raises(CnnTrainError, match="refusing to load builtins.print"):
        build_data(load_recipe("resnet20"), str(root))


def test_image_folder(tmp_path):
    root = write_image_folder(tmp_path)
    recipe = load_recipe("resnet20")
    bundle = build_data(recipe, str(root))
    assert bundle.kind == "folder" and bundle.classes == ["cat", "dog", "fox"]
    assert (len(bundle.train), len(bundle.val)) == (12, 6)
    img, label = bundle.train[5]
    assert img.shape == (3, 32, 32) and label == 1


def test_val_class_missing_from_train(tmp_path):
    root = write_image_folder(tmp_path)
    (root / "val" / "zebra").mkdir()
    (root / "val" / "cat" / "img0.jpg").rename(root / "val" / "zebra" / "z.jpg")
    with pytest.raises(CnnTrainError, match="classes that .* lacks: zebra"):
        build_data(load_recipe("resnet20"), str(root))


def test_unreadable_image_is_skipped_not_fatal(tmp_path):
    root = write_image_folder(tmp_path)
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    bundle = build_data(load_recipe("resnet20"), str(root))
    items = [bundle.train[i] for i in range(len(bundle.train))]
    skipped = [img for img, _ in items if isinstance(img, Skipped)]
    assert len(skipped) == 1 and skipped[0].path.endswith("broken.jpg")
    images, labels, bad = collate(items)
    assert images.shape[0] == 12 and len(bad) == 1


@pytest.mark.parametrize("data, fragment", [
    ("/no/such/place", "no such file or folder"),
    (None, "give --data"),
])
def test_detection_errors_list_layouts(data, fragment):
    with pytest.raises(CnnTrainError) as err:
        detect(data, load_recipe("resnet50"))
    assert fragment in str(err.value) and "cifar-10-batches-py" in str(err.value)
    assert "train/ and val/" in str(err.value)


def test_detection_of_an_unrelated_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CnnTrainError, match="nothing cnntrain can read"):
        detect(str(tmp_path), load_recipe("resnet50"))


def test_cifar_training_transform_pads_crops_and_flips():
    recipe = load_recipe("resnet20")
    tf = TrainTransform(recipe.data, recipe.augment)
    img = torch.arange(3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8).view(3, 32, 32)
    torch.manual_seed(0)
    views = [tf(img) for _ in range(20)]
    assert all(v.shape == (3, 32, 32) for v in views)
    assert any(not torch.equal(v, img) for v in views)
    # every view is a shifted (possibly mirrored) window of the zero-padded image
    padded = torch.nn.functional.pad(img, (4, 4, 4, 4))
    for v in views:
        found = any(torch.equal(cand, v) or torch.equal(cand.flip(-1), v)
                    for t in range(9) for s in range(9) for cand in [padded[:, t:t + 32, s:s + 32]])
        assert found


def test_eval_transform_ten_crops():
    recipe = load_recipe("resnet50", ["data.train_size=8", "data.eval_resize=10"])
    img = torch.randint(0, 256, (3, 10, 12), dtype=torch.uint8)
    out = EvalTransform(recipe.data, crops=10)(img)
    assert out.shape == (10, 3, 8, 8)
    assert torch.equal(out[5], out[1].flip(-1))  # mirror image, whose top-left is the top-right mirrored


def test_pca_lighting_shifts_every_pixel_by_one_colour():
    batch = torch.full((2, 3, 4, 4), 0.5)
    out = pca_lighting(batch, 0.1, torch.Generator().manual_seed(0))
    shift = out - batch
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift))  # same per image
    assert not torch.allclose(shift[0], shift[1])
    assert torch.equal(pca_lighting(batch, 0.0), batch)


def test_topk_on_hand_made_logits():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    target = torch.tensor([1, 2, 0, 1])
    assert topk_correct(logits, target, (1, 2, 5)) == {1: 1, 2: 3, 5: 4}
    meter = Meter((1, 2))
    meter.update(logits, target, loss=2.0)
    assert meter.result() == {"top1": 25.0, "top2": 75.0, "loss": 2.0, "samples": 4}


def test_sample_order_and_augmentation_independent_of_workers_and_resume(tmp_path):
    from cnntrain.data import EpochSampler, make_loader

    root = write_cifar10(tmp_path, per_batch=4, test=2)
    bundle = build_data(load_recipe("resnet20"), str(root))

    def batches(workers: int, start: int = 0) -> torch.Tensor:
        sampler = EpochSampler(len(bundle.train), seed=7)
        sampler.set_epoch(3, start)
        loader = make_loader(bundle.train, 4, workers=workers, sampler=sampler)
        return torch.cat([images for images, _, _ in loader])

    full = batches(0)
    assert torch.equal(full, batches(2))  # same crops and flips whichever worker draws them
    assert torch.equal(full[8:], batches(0, start=8))  # a resumed epoch continues identically
    other = EpochSampler(len(bundle.train), seed=7)
    other.set_epoch(4)
    assert [i for i, _ in other] != [i for i, _ in EpochSampler(len(bundle.train), seed=7)]


def test_a_skipped_files_reason_is_one_line_without_object_addresses():
    from PIL import UnidentifiedImageError

    from cnntrain.data.folder import skip_reason

    exc = UnidentifiedImageError("cannot identify image file <_io.BytesIO object at 0x7fd4d9bf77e0>\nmore")
    assert skip_reason(exc) == "UnidentifiedImageError: cannot identify image file"
