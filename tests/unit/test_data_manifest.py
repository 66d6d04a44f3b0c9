"""The JSONL manifest: tasks survive a round trip, and each malformed line is one rejection, never a crash."""

from __future__ import annotations

import json

import pytest

from rollout.data.manifest import read_manifest, write_manifest
from rollout.records.types import EditOp, PhotoTask


def test_round_trip_keeps_every_field_and_resolves_relative_paths(tmp_path):
    images = tmp_path / "data" / "images"
    tasks = [
        PhotoTask(task_id="a", input=str(images / "a-in.png"), target=str(images / "a-gt.png"), kind="retouch",
                  known_ops=(EditOp(attribute="warmth", direction=-1, level=2),
                             EditOp(attribute="exposure", direction=1, level=3)), source="astronaut"),
        PhotoTask(task_id="b", input="/elsewhere/b-in.png", target="/elsewhere/b-gt.png", kind="restoration",
                  degradations=("blur", "noise")),
    ]
    manifest = write_manifest(tmp_path / "data" / "manifest.jsonl", tasks)

    stored = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert stored[0]["input"] == "images/a-in.png", "paths inside the manifest folder are stored relative"
    assert stored[1]["input"] == "/elsewhere/b-in.png"

    contents = read_manifest(manifest)
    assert contents.rejected == []
    assert [t.task_id for t in contents.tasks] == ["a", "b"]
    first, second = contents.tasks
    assert first.input == str(images / "a-in.png") and first.target == str(images / "a-gt.png")
    assert first.known_ops == tasks[0].known_ops and first.source == "astronaut"
    assert second.kind == "restoration" and second.degradations == ("blur", "noise")


def test_malformed_lines_become_rejections_with_line_numbers(tmp_path):
    good = {"id": "ok", "input": "i.png", "target": "t.png", "kind": "retouch", "degradations": [],
            "known_ops": [{"attribute": "contrast", "direction": 1, "level": 1}]}
    lines = [
        json.dumps(good),                                                  # 1 accepted
        "{not json",                                                       # 2
        json.dumps({**good, "id": "k", "kind": "recolour"}),               # 3
        json.dumps({**good, "id": "o", "known_ops": [{"attribute": "hue", "direction": 1, "level": 1}]}),  # 4
        json.dumps({**good, "id": "l", "known_ops": [{"attribute": "warmth", "direction": 1, "level": 5}]}),  # 5
        json.dumps({k: v for k, v in good.items() if k != "target"} | {"id": "m"}),  # 6
        json.dumps({**good}),                                              # 7 duplicate id
        "",                                                                # blank: ignored
        json.dumps([1, 2]),                                                # 9
        json.dumps({**good, "id": "d", "degradations": ["fog"]}),          # 10
        json.dumps({**good, "id": "x", "extra": 1}),                       # 11
        json.dumps({**good, "id": "fine2", "kind": "restoration", "degradations": ["haze"]}),  # 12 accepted
    ]
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")

    contents = read_manifest(path)

    assert [t.task_id for t in contents.tasks] == ["ok", "fine2"]
    reasons = {r.record_id.rsplit(":", 1)[1]: r.reason for r in contents.rejected}
    assert set(reasons) == {"2", "3", "4", "5", "6", "7", "9", "10", "11"}
    assert "not valid JSON" in reasons["2"]
    assert "kind 'recolour'" in reasons["3"]
    assert "attribute 'hue'" in reasons["4"]
    assert "level 5" in reasons["5"]
    assert "'target' must be a non-empty string" in reasons["6"]
    assert "duplicate id 'ok'" in reasons["7"]
    assert "expected a JSON object" in reasons["9"]
    assert "degradation 'fog'" in reasons["10"]
    assert "unknown key(s) extra" in reasons["11"]
    assert all(r.stage == "data" and r.reason.startswith("line ") for r in contents.rejected)


def test_writer_refuses_duplicate_ids(tmp_path):
    task = PhotoTask(task_id="same", input="a.png", target="b.png")
    with pytest.raises(ValueError, match="duplicate task id 'same'"):
        write_manifest(tmp_path / "m.jsonl", [task, task])
    assert not (tmp_path / "m.jsonl").exists()
