"""The benchmark commands run end to end on tiny inputs (their figures are not checked:
speed claims live in BENCHMARKS.md, measured by these commands)."""
from __future__ import annotations

import torch
from tests.conftest import run_cli

from cnntrain.data import fastjpeg
from cnntrain.engine import factory
from cnntrain.engine.bench import bench_data, bench_decode, bench_train, make_jpegs
from cnntrain.engine.options import BenchDataOptions, BenchDecodeOptions, BenchTrainOptions


def test_bench_data_on_tiny_jpegs(tmp_path, capsys):
    make_jpegs(tmp_path / "jpegs", count=24, classes=2, size=(64, 48))
    result = bench_data(BenchDataOptions(root=str(tmp_path / "jpegs"), workers=0, batches=2, batch_size=4,
                                         warmup=1, repeats=1, device="cpu"))
    assert result["ours_images_per_s"] > 0 and result["baseline_images_per_s"] > 0
    assert result["ratio"] > 0 and "ratio" in capsys.readouterr().out


def test_bench_train_lenet(capsys):
    result = bench_train(BenchTrainOptions(recipe="lenet5", steps=2, batch_size=8, device="cpu", warmup=1, repeats=1))
    assert result["batch_size"] == 8 and result["speedup"] > 0
    assert "overhead" in capsys.readouterr().out


def test_bench_decode_on_tiny_jpegs(tmp_path, capsys):
    make_jpegs(tmp_path / "jpegs", count=6, classes=2, size=(320, 240))
    threads = torch.get_num_threads()
    try:
        result = bench_decode(BenchDecodeOptions(root=str(tmp_path / "jpegs"), count=6, repeats=1))
    finally:
        torch.set_num_threads(threads)
    ms = result["ms_per_image"]
    assert result["images"] == 6 and all(v > 0 for v in ms.values())
    out = capsys.readouterr().out
    assert "baseline sample" in out and "cnntrain sample" in out
    if fastjpeg.has_region_decoder():
        assert "entropy decoding alone" in out and result["ceiling_ratio"] > 0


def test_bench_train_and_fit_build_their_parts_through_one_factory(monkeypatch, tmp_path, capsys):
    """The benchmark measures the step `fit` runs: both build it with factory.build_run."""
    callers = []
    real = factory.build_run

    def recording(recipe, device, **kwargs):
        parts = real(recipe, device, **kwargs)
        callers.append(type(parts.fit_step).__name__)
        return parts

    monkeypatch.setattr(factory, "build_run", recording)
    bench_train(BenchTrainOptions(recipe="lenet5", steps=1, batch_size=4, device="cpu", warmup=0, repeats=1))
    assert callers == ["FitStep"]
    code, _, _ = run_cli(["fit", "--recipe", "lenet5", "--out", tmp_path / "run", "--device", "cpu", "--no-progress",
                          "--set", "train.iterations=1", "--set", "optim.batch_size=8"], capsys)
    assert code == 0
    assert callers == ["FitStep", "FitStep"]
