"""The benchmark commands run end to end on tiny inputs (their figures are not checked:
speed claims live in BENCHMARKS.md, measured by these commands)."""
from __future__ import annotations

from cnntrain.engine.bench import bench_data, bench_train, make_jpegs


def test_bench_data_on_tiny_jpegs(tmp_path, capsys):
    make_jpegs(tmp_path / "jpegs", count=24, classes=2, size=(64, 48))
    result = bench_data(str(tmp_path / "jpegs"), workers=0, batches=2, batch_size=4, warmup=1, repeats=1,
                        device="cpu")
    assert result["ours_images_per_s"] > 0 and result["baseline_images_per_s"] > 0
    assert result["ratio"] > 0 and "ratio" in capsys.readouterr().out


def test_bench_train_lenet(capsys):
    result = bench_train("lenet5", steps=2, batch_size=8, device="cpu", warmup=1, repeats=1)
    assert result["batch_size"] == 8 and result["speedup"] > 0
    assert "overhead" in capsys.readouterr().out
