"""``photocrafter score``: the breakdown a user reads when a reward looks wrong."""

from __future__ import annotations

import json

import cv2
import pytest
from skimage import data

from rewards.operators import apply_adjustments
from rollout.commands.cli import main

CRITIQUE = ("<think>The photo is dark.</think><edit_start>Increase the exposure moderately.</edit_end>"
            "<answer>42</answer>")


@pytest.fixture(scope="module")
def triple(tmp_path_factory):
    folder = tmp_path_factory.mktemp("triple")
    photo = cv2.resize(data.coffee(), (150, 100), interpolation=cv2.INTER_AREA)
    images = {"input": photo, "edit": apply_adjustments(photo, {"exposure": 0.25}),
              "target": apply_adjustments(photo, {"exposure": 0.5}), "cropped": photo[:40]}
    paths = {}
    for name, image in images.items():
        paths[name] = str(folder / f"{name}.png")
        cv2.imwrite(paths[name], cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return paths


def test_json_breakdown_has_every_component(triple, capsys):
    critique_file = triple["input"].replace("input.png", "critique.txt")
    with open(critique_file, "w") as handle:
        handle.write(CRITIQUE)
    code = main(["score", "--input", triple["input"], "--edit", triple["edit"], "--target", triple["target"],
                 "--critique", critique_file, "--edit-score", "70", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    artist = report["artist"]
    assert 0.2 < artist["photometric"] < 0.8 and artist["compliance"] == 1.0
    assert artist["total"] == pytest.approx(artist["compliance"] * (artist["photometric"] + 0.5 * artist["perceptual"]))
    assert set(artist["attribute_scores"]) == {"exposure", "contrast", "saturation", "warmth"}
    assert report["compliance_checks"][0]["attribute"] == "exposure" and report["compliance_checks"][0]["followed"]
    assert report["lpips"]["backbone_is_random"] is True
    assert report["critic"]["format"] == 1.0 and report["critic"]["rank"] == 1.0
    assert report["images"]["input"]["width"] == 150


def test_table_names_each_term(triple, capsys):
    code = main(["score", "--input", triple["input"], "--edit", triple["edit"], "--target", triple["target"],
                 "--critique", CRITIQUE])
    out = capsys.readouterr().out
    assert code == 0
    for term in ("r_photo", "r_comp", "r_perc", "r_PA", "RANDOM backbone", "exposure +2", "r_C"):
        assert term in out


def test_size_mismatch_is_reported_not_raised(triple, capsys):
    code = main(["score", "--input", triple["input"], "--edit", triple["cropped"], "--target", triple["target"]])
    assert code == 1
    assert "edits must be at the target's size" in capsys.readouterr().err


def test_missing_file_is_reported(triple, capsys):
    code = main(["score", "--input", triple["input"], "--edit", "/nonexistent/edit.png", "--target",
                 triple["target"]])
    assert code == 1
    assert "/nonexistent/edit.png" in capsys.readouterr().err
