"""docs/design/map.md names the file that runs each stage of a step; every file it names must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_file_the_map_names_exists():
    text = (ROOT / "docs" / "design" / "map.md").read_text()
    named = set(re.findall(r"`([\w/]+\.(?:py|md))`", text))
    assert len(named) > 30, "the map names the files of every stage"
    missing = sorted(path for path in named if not (ROOT / path).is_file())
    assert missing == [], f"docs/design/map.md names files that do not exist: {missing}"
