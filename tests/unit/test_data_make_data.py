"""Pair folders and ``photocrafter make-data``: what users run, with bad photos mixed in among good ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rollout.commands.cli import main
from rollout.data.manifest import read_manifest
from rollout.data.pairs import tasks_from_pair_folder
from rollout.data.synthesis import embedded_photos
from rollout.records.images import read_image


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return embedded_photos(["coffee"])[0][1]


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _pair_folder(root, coffee):
    good = coffee[:64, :96]
    _save(root / "input" / "good.png", good)
    _save(root / "target" / "good.jpg", good[::-1])                   # suffixes may differ
    _save(root / "input" / "gray.png", good[..., 0])                  # converted, accepted
    _save(root / "target" / "gray.png", good[..., 1])
    _save(root / "input" / "rgba.png", np.dstack([good, np.full(good.shape[:2], 128, np.uint8)]))
    _save(root / "target" / "rgba.png", good)
    _save(root / "input" / "sizes.png", good)
    _save(root / "target" / "sizes.png", good[:32])                   # mismatched
    _save(root / "input" / "orphan.png", good)                        # no target
    _save(root / "input" / "tiny.png", good[:1, :1])
    _save(root / "target" / "tiny.png", good[:1, :1])
    (root / "target" / "cut.png").write_bytes((root / "target" / "gray.png").read_bytes()[:300])
    _save(root / "input" / "cut.png", good)
    (root / "input" / "notes.txt").write_text("not an image, ignored")


def test_pair_folder_accepts_good_and_converted_pairs_and_names_each_refusal(tmp_path, coffee):
    _pair_folder(tmp_path / "pairs", coffee)
    tasks, rejected = tasks_from_pair_folder(tmp_path / "pairs", kind="restoration", degradations=("blur",))
    assert sorted(t.task_id for t in tasks) == ["good", "gray", "rgba"]
    assert all(t.kind == "restoration" and t.degradations == ("blur",) for t in tasks)
    reasons = " | ".join(r.reason for r in rejected)
    assert len(rejected) == 4
    assert "input is 96x64 but target is 96x32" in reasons
    assert "orphan.png has no target/orphan.*" in reasons
    assert "short side is below 16" in reasons
    assert "cut.png: cannot be decoded" in reasons


def test_make_data_pairs_writes_a_manifest_and_reports_counts(tmp_path, coffee, capsys):
    _pair_folder(tmp_path / "pairs", coffee)
    assert main(["make-data", "--pairs", str(tmp_path / "pairs"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "3 accepted (3 retouch, 0 restoration), 4 rejected" in printed
    contents = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert [t.task_id for t in contents.tasks] == ["good", "gray", "rgba"] and not contents.rejected
    assert read_image(contents.tasks[0].input).shape == (64, 96, 3)


def test_make_data_from_photos_synthesises_pairs_and_skips_bad_files(tmp_path, coffee, capsys):
    photos = tmp_path / "photos"
    _save(photos / "coffee.jpg", coffee)
    _save(photos / "nested" / "crop.png", coffee[100:300, 200:500])
    _save(photos / "dot.png", coffee[:1, :1])
    (photos / "empty.jpg").write_bytes(b"")
    code = main(["make-data", "--from", str(photos), "--out", str(tmp_path / "out"), "--per-photo", "4",
                 "--size", "80", "--seed", "1", "--restoration-fraction", "0.5"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "8 accepted (4 retouch, 4 restoration), 2 rejected" in printed
    assert "dot.png" in printed and "empty.jpg" in printed
    listed = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert sorted(Path(r["record_id"]).name for r in listed) == ["dot.png", "empty.jpg"]
    tasks = read_manifest(tmp_path / "out" / "manifest.jsonl").tasks
    for task in tasks:
        source, target = read_image(task.input), read_image(task.target)
        assert source.shape == target.shape and max(source.shape[:2]) == 80
    assert {t.source for t in tasks} == {"coffee", "nested/crop"}


def test_make_data_rejects_bad_arguments_with_a_message(tmp_path, capsys):
    code = main(["make-data", "--from", str(tmp_path), "--out", str(tmp_path / "o"), "--per-photo", "0",
                 "--restoration-fraction", "1.5"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--per-photo must be at least 1" in err and "--restoration-fraction must be in [0, 1]" in err
    assert main(["make-data", "--pairs", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 2
    assert "missing input/, target/" in capsys.readouterr().err


def test_make_data_embedded_and_all_bad_folder(tmp_path, capsys):
    assert main(["make-data", "--embedded", "--out", str(tmp_path / "emb"), "--size", "32",
                 "--num-train", "4", "--num-eval", "2"]) == 0
    printed = capsys.readouterr().out
    assert "train/manifest.jsonl: 4 accepted (3 retouch, 1 restoration)" in printed
    assert "eval/manifest.jsonl: 2 accepted" in printed

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"nope")
    assert main(["make-data", "--from", str(tmp_path / "bad"), "--out", str(tmp_path / "o")]) == 1
    assert "0 accepted" in capsys.readouterr().out
