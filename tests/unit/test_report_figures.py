"""Sample grid and reward-curve images: sizes, layout, and what they show."""

from __future__ import annotations

import numpy as np
import pytest

from rollout.tracking.figures import REWARD_PANELS, SampleRow, render_reward_curves, render_sample_grid


def _image(value, h=40, w=60):
    return np.full((h, w, 3), value, np.uint8)


def _row(task_id, n_edits, rewards=None, critique="exposure too low; increase brightness moderately"):
    return SampleRow(task_id=task_id, input=_image(10), edits=[_image(100 + i) for i in range(n_edits)],
                     target=_image(250), critique=critique,
                     edit_rewards=rewards if rewards is not None else [0.1 * i for i in range(n_edits)],
                     critic_score=3.0)


def test_grid_has_one_row_per_photo_and_a_column_per_image():
    tile = 64
    one = render_sample_grid([_row("a", 3)], tile_size=tile)
    two = render_sample_grid([_row("a", 3), _row("b", 1)], tile_size=tile)
    assert one.dtype == np.uint8 and one.ndim == 3 and one.shape[2] == 3
    assert one.shape[1] == two.shape[1] == 5 * tile + 6 * 6, "input + 3 edits + target"
    assert two.shape[0] > 1.9 * one.shape[0] - 10
    # The input tile (value 10, letterboxed) and the target tile (250) are where the layout says.
    row_top = 6 + 15  # padding + caption line
    assert (one[row_top + tile // 2, 6 + tile // 2] == 10).all()
    assert (one[row_top + tile // 2, 6 + 4 * (tile + 6) + tile // 2] == 250).all()


def test_best_edit_is_framed_and_text_is_drawn():
    grid = render_sample_grid([_row("a", 2, rewards=[0.9, 0.2])], tile_size=64)
    green = (grid[..., 1] > 150) & (grid[..., 0] < 80) & (grid[..., 2] < 100)
    columns = np.nonzero(green.any(axis=0))[0]
    first_edit_left = 6 + 64 + 6
    assert columns.min() >= first_edit_left - 3 and columns.max() <= first_edit_left + 64 + 2
    text_band = grid[6 + 15 + 64 + 6:]
    assert (text_band < 128).any(), "critique text is drawn under the tiles"


def test_long_or_odd_critique_text_stays_inside_its_lines():
    critique = "<think>" + "very " * 500 + "dark</think>\n\t" + "x" * 3000 + " 你好 ünïcode"
    short = render_sample_grid([_row("a", 2, critique="ok")], tile_size=64, text_lines=3)
    long = render_sample_grid([_row("a", 2, critique=critique)], tile_size=64, text_lines=3)
    assert long.shape == short.shape


def test_rows_are_validated_with_named_errors():
    with pytest.raises(ValueError, match=r"'t1' edits\[1\]"):
        SampleRow(task_id="t1", input=_image(0), edits=[_image(0), np.zeros((4, 4), np.uint8)],
                  target=_image(0), critique="", edit_rewards=[0.0, 0.0])
    with pytest.raises(ValueError, match="2 edits but 1 edit_rewards"):
        SampleRow(task_id="t2", input=_image(0), edits=[_image(0), _image(0)], target=_image(0),
                  critique="", edit_rewards=[0.0])
    with pytest.raises(ValueError, match="no rows"):
        render_sample_grid([])


def test_reward_curves_render_with_partial_and_nonfinite_history():
    history = {
        "reward/artist/total/mean": {1: 0.1, 2: 0.3, 3: float("nan"), 4: 0.5},
        "reward/artist/total/std": {1: 0.05, 2: 0.04, 4: 0.02},
        "reward/critic/total/mean": {1: 0.2, 2: 0.25},
    }
    image = render_reward_curves(history, title="run — step 4")
    empty = render_reward_curves({})
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert image.shape == empty.shape == (360, 500 * len(REWARD_PANELS), 3)  # 5 × 3.6 in per panel at 100 dpi
    # Plotted lines add coloured pixels that an empty figure does not have.
    def coloured(a):
        return int((a.max(axis=2).astype(int) - a.min(axis=2) > 60).sum())
    assert coloured(image) > coloured(empty) + 500
