"""bench make-cifar and bench data on a CIFAR root (tiny sizes: the figures are not
checked here, only that both contenders ran over the same data and the ratio is theirs)."""
from __future__ import annotations

import json

import torch

from cnntrain.data.cifar import load_cifar
from cnntrain.engine.bench_cifar import _Cifar10AnyFiles, make_cifar
from tests.conftest import run_cli


def test_make_cifar_is_read_by_cnntrain_and_torchvision(tmp_path):
    make_cifar(tmp_path, count=23, test=4)
    ours = load_cifar("cifar10", tmp_path / "cifar-10-batches-py")
    theirs = _Cifar10AnyFiles(str(tmp_path), train=True)
    assert len(ours["train"][1]) == len(theirs) == 23 and len(ours["val"][1]) == 4
    assert torch.equal(ours["train"][0], torch.from_numpy(theirs.data).permute(0, 3, 1, 2))
    assert ours["train"][1].tolist() == theirs.targets and ours["classes"][0] == "airplane"


def test_bench_data_on_cifar_compares_resident_with_torchvision(tmp_path, capsys):
    code, _, err = run_cli(["bench", "make-cifar", tmp_path / "c", "--count", "60", "--test", "2"], capsys)
    assert code == 0, err
    threads = torch.get_num_threads()
    code, out, err = run_cli(["bench", "data", "--data", tmp_path / "c", "--workers", "0", "--batches", "2",
                              "--batch-size", "8", "--warmup", "1", "--repeats", "1", "--device", "cpu",
                              "--json", tmp_path / "r.json"], capsys)
    assert code == 0, err
    r = json.loads((tmp_path / "r.json").read_text())
    assert "torchvision CIFAR10" in out and "device-resident" in out
    assert r["recipe"] == "resnet20" and r["images_in_folder"] == 60
    assert r["ratio"] == r["ours_images_per_s"] / r["baseline_images_per_s"] > 0
    # on CPU the resident contender runs one intra-op thread, as each baseline worker does; restored after
    assert r["ours_threads"] == 1 and "1 intra-op thread:" in out and torch.get_num_threads() == threads
    code, _, err = run_cli(["bench", "data", "--data", tmp_path / "c", "--batches", "20", "--batch-size", "8"], capsys)
    assert code == 2 and "make-cifar" in err


def test_mfu_names_its_peak_and_counts_three_forward_passes(monkeypatch):
    from cnntrain.engine.mfu import peak_bf16, train_flops_per_image
    from cnntrain.models import build_model
    from cnntrain.summary import summarize

    assert peak_bf16("NVIDIA H100 80GB HBM3")[0] == 989.4 and peak_bf16("NVIDIA H100 PCIe")[0] == 756.5
    assert peak_bf16("NVIDIA A100-SXM4-80GB")[0] == 312.0
    peak, why = peak_bf16("Tesla T4")
    assert peak is None and "CNNTRAIN_PEAK_TFLOPS" in why
    monkeypatch.setenv("CNNTRAIN_PEAK_TFLOPS", "65")
    assert peak_bf16("Tesla T4")[0] == 65.0
    model = build_model("lenet5", num_classes=10, in_channels=1)
    assert train_flops_per_image(model, (1, 32, 32)) == 6 * summarize(model, (1, 32, 32)).macs > 0
