"""cnntrain data check (every planted problem listed, exit 0/1/2) and cnntrain data
imagenet-val (both label files; hard links; the layout fit and eval read, and the flat
folder read in place through data.val_labels)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from cnntrain.data import build_data
from cnntrain.recipe import load_recipe
from tests.conftest import run_cli, write_image_folder

FAST = ["--no-progress", "--workers", "0"]


def test_data_check_lists_every_planted_problem(tmp_path, capsys):
    root = write_image_folder(tmp_path / "d", classes=("cat", "dog", "fox"), per_class=3, val_per_class=2)
    code, out, err = run_cli(["data", "check", root, "--no-progress"], capsys)
    assert code == 0, out + err
    assert "no problems found" in out and "train: 3 classes, 9 images" in out and "width 40/40/40" in out

    shutil.rmtree(root / "val/fox")  # a class missing from val
    (root / "train/owl").mkdir()  # an empty class
    (root / "train/cat/empty.jpg").write_bytes(b"")  # a zero-byte file
    (root / "train/dog/notes.jpg").write_text("not an image")  # an unreadable file
    shutil.copy(root / "train/cat/img0.jpg", root / "val/dog/copy.jpg")  # a train image in val
    (root / "train/stray.png").write_bytes((root / "train/cat/img1.png").read_bytes())  # outside a class
    code, out, _ = run_cli(["data", "check", root, "--no-progress", "--json", tmp_path / "c.json"], capsys)
    assert code == 1
    problems = json.loads((tmp_path / "c.json").read_text())["problems"]
    expected = [f"{root}/train/owl: empty class folder",
                "val/ lacks 2 of train/'s classes: fox, owl",
                f"{root}/train/cat/empty.jpg: zero-byte file",
                f"{root}/train/dog/notes.jpg: unreadable",
                f"{root}/val/dog/copy.jpg: same bytes as {root}/train/cat/img0.jpg",
                f"{root}/train/stray.png: outside any class folder"]
    for fragment in expected:
        assert any(fragment in p for p in problems), (fragment, problems)
        assert fragment in out
    assert len(problems) == len(expected)
    assert f"{len(expected)} problem(s) found" in out

    code, _, err = run_cli(["data", "check", tmp_path / "nope"], capsys)
    assert code == 2 and "no such folder" in err
    code, _, err = run_cli(["data", "check", root / "train"], capsys)
    assert code == 2 and "no train/ folder" in err


WNIDS = ["n01440764", "n01443537"]  # two real WordNet ids; the ILSVRC2012_IDs below are made up


def flat_val(root: Path) -> dict[str, str]:
    """Four flat ILSVRC2012_val_*.JPEG files and their true classes."""
    root.mkdir(parents=True)
    truth = {}
    for i in range(1, 5):
        stem = f"ILSVRC2012_val_{i:08d}"
        arr = np.full((24, 32, 3), 60 * i, dtype=np.uint8)
        Image.fromarray(arr).save(root / f"{stem}.JPEG")
        truth[stem] = WNIDS[i % 2]
    return truth


def write_devkit(folder: Path, truth: dict[str, str]) -> Path:
    """The devkit's data/meta.mat (a parent synset with children, then two leaves) and
    ground-truth list, numbered by ILSVRC2012_ID as the real one is."""
    folder.mkdir(parents=True)
    ids = {WNIDS[0]: 449, WNIDS[1]: 450}
    fields = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O")]
    synsets = np.array([(1001, "n00000001", "fish", "", 2), (449, WNIDS[0], "tench", "", 0),
                        (450, WNIDS[1], "goldfish", "", 0)], dtype=fields)
    scipy.io.savemat(str(folder / "meta.mat"), {"synsets": synsets})
    gt = folder / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("".join(f"{ids[truth[s]]}\n" for s in sorted(truth)))
    return gt


def test_imagenet_val_from_the_solution_csv_and_the_devkit(tmp_path, capsys):
    truth = flat_val(tmp_path / "flat")
    csv_file = tmp_path / "LOC_val_solution.csv"
    csv_file.write_text("ImageId,PredictionString\n" + "".join(
        f"{s},{w} 1 2 30 20 {w} 3 4 10 10\n" for s, w in truth.items()))
    for labels, out in ((csv_file, tmp_path / "by-csv"), (write_devkit(tmp_path / "devkit/data", truth),
                                                          tmp_path / "by-devkit")):
        code, text, err = run_cli(["data", "imagenet-val", tmp_path / "flat", "--labels", labels, "--out", out],
                                  capsys)
        assert code == 0, err
        assert "4 linked" in text and "0 labelled but absent" in text
        for stem, wnid in truth.items():
            linked = out / wnid / f"{stem}.JPEG"
            assert os.path.samefile(linked, tmp_path / "flat" / f"{stem}.JPEG")  # a hard link, no copy
    code, text, _ = run_cli(["data", "imagenet-val", tmp_path / "flat", "--labels", csv_file, "--out",
                             tmp_path / "by-csv"], capsys)
    assert code == 0 and "4 already there" in text

    (tmp_path / "img.jpg").write_bytes(bytes(range(256)) * 4)  # a binary file: no traceback
    code, _, err = run_cli(["data", "imagenet-val", tmp_path / "flat", "--labels", tmp_path / "img.jpg"], capsys)
    assert code == 2 and "neither LOC_val_solution.csv" in err and "Traceback" not in err
    (tmp_path / "elsewhere").mkdir()  # the wrong folder: nothing to link is an error, not "0 linked"
    (tmp_path / "elsewhere/photo.JPEG").write_bytes(b"x")
    code, _, err = run_cli(["data", "imagenet-val", tmp_path / "elsewhere", "--labels", csv_file], capsys)
    assert code == 2 and f"no labelled image found in {tmp_path / 'elsewhere'}" in err
    assert "is this the flat ILSVRC2012_val_*.JPEG folder?" in err and not (tmp_path / "elsewhere/n01440764").exists()
    (tmp_path / "bad.txt").write_text("hello\n")
    code, _, err = run_cli(["data", "imagenet-val", tmp_path / "flat", "--labels", tmp_path / "bad.txt"], capsys)
    assert code == 2 and "neither LOC_val_solution.csv" in err
    os.remove(tmp_path / "devkit/data/meta.mat")
    code, _, err = run_cli(["data", "imagenet-val", tmp_path / "flat", "--labels",
                            tmp_path / "devkit/data/ILSVRC2012_validation_ground_truth.txt"], capsys)
    assert code == 2 and "meta.mat" in err


def test_arranged_and_in_place_val_read_by_fit_and_eval(tmp_path, capsys):
    truth = flat_val(tmp_path / "root/val")
    for wnid in WNIDS:  # a training split of the same classes
        (tmp_path / "root/train" / wnid).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((24, 32, 3), 100 + i, dtype=np.uint8)).save(
                tmp_path / "root/train" / wnid / f"{i}.JPEG")
    csv_file = tmp_path / "LOC_val_solution.csv"
    csv_file.write_text("ImageId,PredictionString\n" + "".join(f"{s},{w} 0 0 1 1\n" for s, w in truth.items()))

    recipe = load_recipe("lenet5", [f"data.val_labels={json.dumps(str(csv_file))}", "data.train_size=16"])
    bundle = build_data(recipe, str(tmp_path / "root"), train=False)
    assert sorted((Path(p).stem, bundle.classes[y]) for p, y in bundle.val.samples) == sorted(truth.items())

    assert run_cli(["data", "imagenet-val", tmp_path / "root/val", "--labels", csv_file], capsys)[0] == 0
    code, _, err = run_cli(["fit", "--recipe", "lenet5", "--data", tmp_path / "root", "--out", tmp_path / "r",
                            "--set", "data.train_size=16", "--set", "data.eval_resize=16", "--set", 'augment.crop="none"',
                            "--set", "train.iterations=1", "--batch-size", "2", *FAST], capsys)
    assert code == 0, err
    code, out, err = run_cli(["eval", tmp_path / "r/best.pt", "--json", tmp_path / "e.json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "e.json").read_text())["samples"] == 4
