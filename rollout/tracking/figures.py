"""Pictures of a run for people: the sample grid and the reward curves, rendered as uint8 RGB arrays.

Owns the drawing only: turning :class:`SampleRow` records into a grid image (one row per photo:
input | edits… | target, with the critique text and rewards written under it) and a metric history into
reward-curve panels. It must not log, write files or talk to MLflow (``rollout.tracking.run_tracker`` does that), and it
must not fetch fonts: text uses Pillow's built-in font, so rendering works offline.

Both renderers return ``np.ndarray`` uint8 ``[H, W, 3]`` so callers can save, compare or log them alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# The artist's edits are scored on a scale where bigger is better; the best edit of a row gets this frame
# so a reader sees at a glance which sample the reward preferred.
_BEST_EDIT_COLOUR = (40, 170, 60)
_TEXT_COLOUR = (20, 20, 20)
_MUTED_COLOUR = (110, 110, 110)
_BACKGROUND = (255, 255, 255)
_EMPTY_TILE = (235, 235, 235)
_PAD = 6


@dataclass(kw_only=True, slots=True)
class SampleRow:
    """One photo of a sample grid: what went in, what the artist made, what it should look like, and why."""

    task_id: str
    """Task id, printed at the start of the row's text."""
    input: np.ndarray
    """The photo the critic saw, uint8 ``[H, W, 3]``."""
    edits: list[np.ndarray]
    """The artist's edits of this photo (for one critique), each uint8 ``[H, W, 3]``."""
    target: np.ndarray
    """The reference photo, uint8 ``[H, W, 3]``."""
    critique: str
    """The critic's text that conditioned the edits (shown collapsed to one paragraph, truncated)."""
    edit_rewards: list[float]
    """Artist reward total r_PA of each edit, same order as ``edits``."""
    critic_score: float | None = None
    """Score the critic gave the input (None when its output did not parse)."""
    critic_reward: float | None = None
    """Critic reward total of this critique (None when not computed)."""

    def __post_init__(self) -> None:
        for name, image in [("input", self.input), ("target", self.target)] + [
                (f"edits[{i}]", e) for i, e in enumerate(self.edits)]:
            _check_image(image, f"SampleRow {self.task_id!r} {name}")
        if len(self.edit_rewards) != len(self.edits):
            raise ValueError(
                f"SampleRow {self.task_id!r}: {len(self.edits)} edits but {len(self.edit_rewards)} "
                "edit_rewards; give one reward per edit")


def _check_image(image: object, what: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"{what}: expected a uint8 [H, W, 3] array, got shape {shape} dtype {dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{what}: empty image of shape {image.shape}")


def _font(size: int):
    from PIL import ImageFont

    # Pillow ≥ 10.1 embeds a small TrueType face (no file, no download); the bitmap fallback covers builds
    # without FreeType.
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):
        return ImageFont.load_default()


def _printable(text: str) -> str:
    """One paragraph of text the built-in font can draw: whitespace collapsed, other scripts replaced."""
    text = re.sub(r"\s+", " ", text).strip()
    return text.encode("latin-1", errors="replace").decode("latin-1")


def _wrap(draw, text: str, font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; the last kept line ends in '...' when text was cut."""
    lines: list[str] = []
    current = ""
    words = text.split(" ") if text else []
    index = 0
    while index < len(words) and len(lines) < max_lines:
        word = words[index]
        candidate = f"{current} {word}".strip()
        if draw.textlength(candidate, font=font) <= width:
            current = candidate
            index += 1
            continue
        if not current:
            # A single word wider than the row (a long token run): cut it by characters.
            cut = max(1, int(len(word) * width / max(draw.textlength(word, font=font), 1.0)))
            lines.append(word[:cut])
            words[index] = word[cut:]
            continue
        lines.append(current)
        current = ""
    if current and len(lines) < max_lines:
        lines.append(current)
        current = ""
    if index < len(words) or current:
        last = lines[-1] if lines else ""
        while last and draw.textlength(last + "...", font=font) > width:
            last = last[:-1]
        if lines:
            lines[-1] = last + "..."
    return lines


def _tile(image: np.ndarray, size: int) -> np.ndarray:
    """Fit an image into a ``size``² tile, keeping its aspect ratio (letterboxed on the empty tile colour)."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    # Upscaled tiny images keep hard pixels (what the model really produced); downscaling is antialiased.
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample))
    tile = np.empty((size, size, 3), np.uint8)
    tile[:] = _EMPTY_TILE
    top, left = (size - new_h) // 2, (size - new_w) // 2
    tile[top:top + new_h, left:left + new_w] = resized
    return tile


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.3f}"


def render_sample_grid(rows: Sequence[SampleRow], *, tile_size: int = 128, text_lines: int = 4,
                       font_size: int = 11) -> np.ndarray:
    """Draw one grid row per photo: input | edit 1 … edit K | target, captions, critique text below.

    Rows with fewer edits than the widest row leave their extra cells empty. Each edit's caption is its
    reward; the best edit of a row is framed in green. Returns uint8 ``[H, W, 3]``.
    """
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("render_sample_grid: no rows to draw")
    if tile_size < 16:
        raise ValueError(f"render_sample_grid: tile_size {tile_size} is below the 16-pixel minimum")
    font = _font(font_size)
    line_height = font_size + 4
    columns = 2 + max(len(row.edits) for row in rows)
    caption_height = line_height
    text_height = text_lines * line_height
    row_height = caption_height + tile_size + _PAD + text_height + 2 * _PAD
    width = columns * tile_size + (columns + 1) * _PAD
    height = len(rows) * row_height + _PAD
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        top = _PAD + r * row_height
        tiles_top = top + caption_height
        best = int(np.argmax(row.edit_rewards)) if row.edit_rewards and all(
            math.isfinite(x) for x in row.edit_rewards) else -1
        cells: list[tuple[str, np.ndarray | None]] = [("input", row.input)]
        cells += [(f"edit {k + 1}  r={_fmt(row.edit_rewards[k])}", edit) for k, edit in enumerate(row.edits)]
        cells += [("", None)] * (columns - 2 - len(row.edits))
        cells.append(("target", row.target))
        for c, (caption, image) in enumerate(cells):
            left = _PAD + c * (tile_size + _PAD)
            if image is None:
                continue
            draw.text((left, top), caption, fill=_TEXT_COLOUR, font=font)
            canvas.paste(Image.fromarray(_tile(image, tile_size)), (left, tiles_top))
            if 1 <= c <= len(row.edits) and c - 1 == best:
                draw.rectangle([left - 2, tiles_top - 2, left + tile_size + 1, tiles_top + tile_size + 1],
                               outline=_BEST_EDIT_COLOUR, width=3)
        header = (f"{row.task_id} | critic score {_fmt(row.critic_score)} "
                  f"| critic reward {_fmt(row.critic_reward)} | ")
        text = _printable(header + (row.critique or "(empty critique)"))
        text_top = tiles_top + tile_size + _PAD
        for i, line in enumerate(_wrap(draw, text, font, width - 2 * _PAD, text_lines)):
            draw.text((_PAD, text_top + i * line_height), line,
                      fill=_TEXT_COLOUR if i else _MUTED_COLOUR, font=font)
    return np.asarray(canvas, dtype=np.uint8).copy()


@dataclass(frozen=True, slots=True)
class CurvePanel:
    """One panel of the reward-curve figure: a title and the metric keys plotted in it."""

    title: str
    keys: tuple[str, ...]
    band: dict[str, str] = field(default_factory=dict)
    """``mean key → std key``: draw mean ± std as a shaded band when the std was logged."""
    ylim: tuple[float, float] | None = None
    """Fixed y range for bounded quantities (fractions), so a flat line is not magnified into noise."""


REWARD_PANELS: tuple[CurvePanel, ...] = (
    CurvePanel("artist reward (per edit)",
               ("reward/artist/total/mean", "reward/artist/compliance/mean",
                "reward/artist/photometric/mean", "reward/artist/perceptual/mean"),
               band={"reward/artist/total/mean": "reward/artist/total/std"}),
    CurvePanel("critic reward (per critique)",
               ("reward/critic/total/mean", "reward/critic/format/mean", "reward/critic/rank/mean",
                "reward/critic/suggestion/mean")),
    # On its own axes: a 0–100 score beside rewards of order 1 would flatten them into the x axis.
    CurvePanel("critic score of the input (0–100)", ("reward/critic/score/mean",)),
    CurvePanel("groups with zero reward variance",
               ("groups/critic/zero_variance_frac", "groups/artist/zero_variance_frac"), ylim=(-0.02, 1.02)),
)
"""What the reward-curve figure shows; keys that were never logged are left out of the legend."""


def curve_keys(panels: Sequence[CurvePanel] = REWARD_PANELS) -> set[str]:
    """Every metric key the curve panels read (plotted keys and their std bands)."""
    return {key for panel in panels for key in (*panel.keys, *panel.band.values())}


def render_reward_curves(history: Mapping[str, Mapping[int, float]], *,
                         panels: Sequence[CurvePanel] = REWARD_PANELS, title: str = "",
                         dpi: int = 100) -> np.ndarray:
    """Plot ``history`` (metric key → {step: value}) as one panel per :class:`CurvePanel`, side by side.

    Non-finite points are not drawn. A panel with nothing logged yet says so instead of staying blank.
    Returns uint8 ``[H, W, 3]``.
    """
    # The object-oriented API with an Agg canvas: no pyplot global state, safe beside other threads and
    # without a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(5.0 * len(panels), 3.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        drawn = 0
        for key in panel.keys:
            points = sorted((s, v) for s, v in history.get(key, {}).items() if math.isfinite(v))
            if not points:
                continue
            steps = np.array([s for s, _ in points], dtype=np.float64)
            values = np.array([v for _, v in points], dtype=np.float64)
            label = key.removeprefix("reward/").removesuffix("/mean")
            (line,) = ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3,
                              linewidth=1.5, label=label)
            drawn += 1
            std_key = panel.band.get(key)
            spread = history.get(std_key, {}) if std_key else {}
            if spread:
                lo_hi = [(s, v - spread[s], v + spread[s]) for s, v in points
                         if s in spread and math.isfinite(spread[s])]
                if lo_hi:
                    ax.fill_between([p[0] for p in lo_hi], [p[1] for p in lo_hi], [p[2] for p in lo_hi],
                                    color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if panel.ylim is not None:
            ax.set_ylim(*panel.ylim)
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, "nothing logged yet", ha="center", va="center", transform=ax.transAxes,
                    color="gray")
    if title:
        figure.suptitle(title, fontsize=11)
    figure.canvas.draw()
    rgba = np.asarray(figure.canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3], dtype=np.uint8)
