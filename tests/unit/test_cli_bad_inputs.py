"""Every command that reads a photo answers an unreadable one with one line naming the file and what is wrong
(and its documented exit status), never a decoder traceback; a model directory that cannot be used is refused,
never replaced by other models."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from skimage import data

from rollout.commands.cli import main


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A good PNG, a text file named .jpg and a JPEG cut in half, plus manifests over them."""
    folder = tmp_path_factory.mktemp("photos")
    good = folder / "good.png"
    Image.fromarray(data.coffee()[:96, :128]).save(good)
    text = folder / "notes.jpg"
    text.write_text("not a photo, just text\n")
    whole = folder / "whole.jpg"
    Image.fromarray(data.astronaut()[:128, :128]).save(whole, quality=90)
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    op = {"attribute": "exposure", "direction": 1, "level": 2}

    def manifest(name, inputs):
        lines = [json.dumps({"id": f"{name}-{i}", "input": str(path), "target": str(good), "known_ops": [op]})
                 for i, path in enumerate(inputs)]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        return str(folder / f"{name}.jsonl")

    return {"folder": folder, "good": str(good), "text": str(text), "truncated": str(truncated),
            "mixed": manifest("mixed", [good, text, truncated]), "bad": manifest("bad", [text, truncated])}


BAD = (("text", "not an image format"), ("truncated", "truncated"))


def _one_line_per_bad_photo(err: str, photos) -> None:
    assert "Traceback" not in err
    for name, reason in BAD:
        lines = [line for line in err.splitlines() if photos[name] in line]
        assert len(lines) == 1 and reason in lines[0], err


@pytest.mark.parametrize("name,reason", BAD)
def test_enhance_names_the_unreadable_photo(photos, capsys, name, reason):
    assert main(["enhance", photos[name], "--out", str(photos["folder"] / "out.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and photos[name] in err and reason in err


@pytest.mark.parametrize("name,reason", BAD)
def test_score_names_the_unreadable_photo(photos, capsys, name, reason):
    assert main(["score", "--input", photos["good"], "--edit", photos[name], "--target", photos["good"]]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--edit {photos[name]}" in err and reason in err


def test_evaluate_skips_unreadable_held_out_photos_with_a_line_each(photos, capsys, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", photos["mixed"], "--out", str(out), "--no-mlflow"]) == 0
    _one_line_per_bad_photo(capsys.readouterr().err, photos)
    results = json.loads((out / "results.json").read_text())
    # identity, auto-retouch and the oracle, each on the one good photo
    assert [(row["method"], row["pairs"]) for row in results["summaries"]] == [
        ("identity", 1), ("auto-retouch", 1), ("oracle", 1)]
    assert [s["record_id"] for s in results["info"]["skipped"]] == ["mixed-1", "mixed-2"]
    assert "[n/a]" in (out / "table.md").read_text(), "one pair: means without intervals"
    assert main(["evaluate", "--data", photos["bad"], "--out", str(out), "--no-mlflow"]) == 1
    err = capsys.readouterr().err
    _one_line_per_bad_photo(err, photos)
    assert "no photo of" in err


def test_sft_skips_unreadable_training_photos_and_refuses_a_set_with_none(photos, capsys, tmp_path):
    code = main(["sft", "--stage", "critic", "--out", str(tmp_path / "warm"), "--steps", "1",
                 "--set", "data.source=manifest", "--set", f"data.train_manifest={photos['bad']}"])
    assert code == 1
    err = capsys.readouterr().err
    _one_line_per_bad_photo(err, photos)
    assert "no photo of" in err and not (tmp_path / "warm").exists()


def test_make_data_names_each_unreadable_photo(photos, capsys, tmp_path):
    folder = tmp_path / "source"
    folder.mkdir()
    for name, _ in BAD:
        (folder / photos[name].rsplit("/", 1)[1]).write_bytes(open(photos[name], "rb").read())
    assert main(["make-data", "--from", str(folder), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "Traceback" not in out
    for name, reason in BAD:
        file_name = photos[name].rsplit("/", 1)[1]
        assert len([line for line in out.splitlines() if f"rejected {folder / file_name}" in line
                    and reason in line]) == 1, out


def test_the_training_stream_names_each_unreadable_photo(photos):
    from rollout.data.stream import PhotoTaskStream

    stream = PhotoTaskStream.from_manifest(photos["mixed"], shuffle=False)
    batch = stream.next_batch(2)
    assert [task.task_id for task in batch] == ["mixed-0", "mixed-0"]
    reasons = {record.record_id: record.reason for record in stream.rejected}
    assert photos["text"] in reasons["mixed-1"] and "not an image format" in reasons["mixed-1"]
    assert photos["truncated"] in reasons["mixed-2"] and "truncated" in reasons["mixed-2"]


# ------------------------------------------------------------------------------- model directories

@pytest.fixture()
def stray_config_dir(tmp_path):
    directory = tmp_path / "not-a-checkpoint"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    return directory


def test_enhance_refuses_a_checkpoint_it_cannot_use_instead_of_running_other_models(photos, capsys,
                                                                                  stray_config_dir):
    out = photos["folder"] / "never.png"
    assert main(["enhance", photos["good"], "--checkpoint", str(stray_config_dir), "--out", str(out)]) == 2
    err = capsys.readouterr()
    assert "critic/" in err.err and "artist/" in err.err and str(stray_config_dir) in err.err
    assert "critique:" not in err.out and not out.exists()


def test_enhance_refuses_a_checkpoint_with_only_a_critic(photos, capsys, tmp_path, embedded_models):
    import shutil

    warm = tmp_path / "critic-only"
    shutil.copytree(embedded_models.critic, warm / "critic")
    assert main(["enhance", photos["good"], "--checkpoint", str(warm), "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "missing artist/;" in err


def test_evaluate_and_sft_refuse_unusable_model_directories(capsys, stray_config_dir, tmp_path):
    assert main(["evaluate", "--checkpoint", f"mine={stray_config_dir}", "--out", str(tmp_path / "e"),
                 "--no-mlflow"]) == 2
    assert "critic/" in capsys.readouterr().err
    assert main(["sft", "--stage", "critic", "--out", str(tmp_path / "w"), "--init-from", str(stray_config_dir)]) == 2
    err = capsys.readouterr().err
    assert "--init-from" in err and "critic/" in err and "artist/" in err


def test_a_training_run_given_as_model_directory_points_to_export(capsys, tmp_path, photos):
    run = tmp_path / "runs" / "job"
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    assert main(["enhance", photos["good"], "--checkpoint", str(run), "--out", str(tmp_path / "o.png")]) == 2
    assert f"photocrafter export {run}" in capsys.readouterr().err
