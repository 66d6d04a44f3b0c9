"""PhotoTaskStream: seeded epochs, batches across epoch boundaries, exact resume, bad records skipped and counted."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rollout.data.manifest import write_manifest
from rollout.data.stream import NoUsableRecordsError, PhotoTaskStream
from rollout.records.images import ImageLimits, write_png
from rollout.records.types import PhotoTask

LIMITS = ImageLimits(min_side=16, max_pixels=1_000_000)


def _write_pairs(folder, count: int) -> list[PhotoTask]:
    tasks = []
    for i in range(count):
        image = np.full((20, 24, 3), i * 10, dtype=np.uint8)
        write_png(folder / f"{i}-in.png", image)
        write_png(folder / f"{i}-gt.png", 255 - image)
        tasks.append(PhotoTask(task_id=f"t{i}", input=str(folder / f"{i}-in.png"),
                               target=str(folder / f"{i}-gt.png")))
    return tasks


def _ids(batch: list[PhotoTask]) -> list[str]:
    return [task.task_id for task in batch]


def test_every_epoch_is_a_seeded_permutation_and_batches_cross_epochs(tmp_path):
    stream = PhotoTaskStream(_write_pairs(tmp_path, 5), seed=3, limits=LIMITS)
    seen = [_ids(stream.next_batch(3)) for _ in range(5)]   # 15 tasks = exactly 3 epochs
    flat = [task_id for batch in seen for task_id in batch]
    epochs = [flat[0:5], flat[5:10], flat[10:15]]
    for epoch in epochs:
        assert sorted(epoch) == [f"t{i}" for i in range(5)], "each epoch visits every record once"
    assert len({tuple(epoch) for epoch in epochs}) > 1, "the order is reshuffled per epoch"
    assert stream.epoch == 2

    same_seed = PhotoTaskStream(_write_pairs(tmp_path, 5), seed=3, limits=LIMITS)
    assert [_ids(same_seed.next_batch(3)) for _ in range(5)] == seen
    other_seed = PhotoTaskStream(_write_pairs(tmp_path, 5), seed=4, limits=LIMITS)
    assert [_ids(other_seed.next_batch(3)) for _ in range(5)] != seen


def test_batches_hold_loaded_arrays():
    tasks = [PhotoTask(task_id="gray", input=np.zeros((16, 16), dtype=np.uint8),
                       target=np.full((16, 16, 4), 255, dtype=np.uint8))]
    batch = PhotoTaskStream(tasks, limits=LIMITS).next_batch(2)
    assert len(batch) == 2, "a batch larger than the data wraps into the next epoch"
    assert batch[0].input.shape == batch[0].target.shape == (16, 16, 3)
    assert batch[0].input.dtype == np.uint8


def test_resume_from_state_dict_continues_the_exact_sequence(tmp_path):
    tasks = _write_pairs(tmp_path, 7)
    uninterrupted = PhotoTaskStream(tasks, seed=11, limits=LIMITS)
    reference = [_ids(uninterrupted.next_batch(4)) for _ in range(6)]

    first = PhotoTaskStream(tasks, seed=11, limits=LIMITS)
    head = [_ids(first.next_batch(4)) for _ in range(3)]
    saved = first.state_dict()
    resumed = PhotoTaskStream(tasks, seed=11, limits=LIMITS)
    resumed.load_state_dict(saved)
    tail = [_ids(resumed.next_batch(4)) for _ in range(3)]
    assert head + tail == reference

    with pytest.raises(ValueError, match="num_records is 7 in the checkpoint but 6 now"):
        PhotoTaskStream(tasks[:6], seed=11, limits=LIMITS).load_state_dict(saved)


def test_bad_records_are_skipped_counted_once_and_never_stop_the_stream(tmp_path):
    tasks = _write_pairs(tmp_path, 3)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.fromarray(np.zeros((1, 1, 3), dtype=np.uint8)).save(tmp_path / "dot.png")
    write_png(tmp_path / "wide.png", np.zeros((20, 30, 3), dtype=np.uint8))
    tasks += [
        PhotoTask(task_id="broken", input=str(tmp_path / "broken.png"), target=tasks[0].target),
        PhotoTask(task_id="dot", input=str(tmp_path / "dot.png"), target=str(tmp_path / "dot.png")),
        PhotoTask(task_id="mismatch", input=str(tmp_path / "wide.png"), target=tasks[0].target),
        PhotoTask(task_id="missing", input=str(tmp_path / "nope.png"), target=tasks[0].target),
    ]
    manifest = write_manifest(tmp_path / "manifest.jsonl", tasks)
    with manifest.open("a") as handle:
        handle.write("{broken json\n")
    stream = PhotoTaskStream.from_manifest(manifest, seed=0, limits=LIMITS)
    assert len(stream.rejected) == 1 and "line 8" in stream.rejected[0].reason

    batches = [stream.next_batch(2) for _ in range(9)]   # 18 good tasks = 6 epochs over 3 good records
    assert all(len(batch) == 2 for batch in batches)
    assert {t.task_id for batch in batches for t in batch} == {"t0", "t1", "t2"}
    reasons = {r.record_id: r.reason for r in stream.rejected[1:]}
    assert len(stream.rejected) == 5, "each bad record is counted once, not once per epoch"
    assert "input" in reasons["broken"] and "cannot be decoded" in reasons["broken"]
    assert "short side is below 16" in reasons["dot"]
    assert "input is 30x20 but target is 24x20" in reasons["mismatch"]
    assert "no such file" in reasons["missing"]


def test_a_stream_of_only_bad_records_fails_clearly_instead_of_spinning(tmp_path):
    tasks = [PhotoTask(task_id=f"bad{i}", input=str(tmp_path / "none.png"), target=str(tmp_path / "none.png"))
             for i in range(3)]
    stream = PhotoTaskStream(tasks, limits=LIMITS)
    with pytest.raises(NoUsableRecordsError, match="all 3 records were refused"):
        stream.next_batch(1)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("# nothing here\n")
    with pytest.raises(NoUsableRecordsError, match="has no valid records"):
        PhotoTaskStream.from_manifest(empty)


def test_config_sections_become_streams(tmp_path):
    from rollout.config import DataConfig
    from rollout.data.sources import evaluation_stream, training_stream

    config = DataConfig(image_size=32, num_train=4, num_eval=2, min_image_side=16)
    train = training_stream(config, seed=0, cache_dir=tmp_path)
    held_out = evaluation_stream(config, seed=0, cache_dir=tmp_path)
    assert len(train) == 4 and len(held_out) == 2
    assert train.next_batch(2)[0].input.shape == (32, 32, 3)
    assert [t.task_id for t in held_out.next_batch(2)] == ["eval-00000-chelsea", "eval-00001-coffee"]
    assert len(list(tmp_path.glob("embedded-*"))) == 1, "both streams share one cached build"

    missing = DataConfig(source="manifest", train_manifest=str(tmp_path / "absent.jsonl"))
    with pytest.raises(FileNotFoundError, match="absent.jsonl: no such file"):
        training_stream(missing, seed=0)


def test_records_without_pixels_share_the_cursor_and_refusals(tmp_path):
    tasks = _write_pairs(tmp_path, 4)
    loading = PhotoTaskStream(tasks, seed=2, limits=LIMITS)
    expected = [_ids(loading.next_batch(3)) for _ in range(2)]

    paths_only = PhotoTaskStream(tasks, seed=2, limits=LIMITS)
    records = paths_only.next_records(3)
    assert _ids(records) == expected[0]
    assert all(isinstance(r.input, str) for r in records), "no pixels are read"
    paths_only.refuse(records[0], "input unreadable in a worker")
    paths_only.refuse(records[0], "reported twice")
    assert [r.reason for r in paths_only.rejected] == ["input unreadable in a worker"]
    following = _ids(paths_only.next_records(6))
    assert records[0].task_id not in following and len(following) == 6
    with pytest.raises(KeyError, match="'stranger' is not a record"):
        paths_only.refuse(PhotoTask(task_id="stranger", input="a", target="b"), "x")
