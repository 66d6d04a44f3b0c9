"""Generates docs/config.md, the config reference, from the pydantic models' field docstrings and bounds.

Owns only rendering; the models are the single source of truth. ``python -m rollout.commands.config_reference``
rewrites the file; a unit test fails when the committed file is stale.
"""

from __future__ import annotations

import sys
from typing import Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from rollout.config import PROJECT_ROOT, TrainConfig

OUTPUT = PROJECT_ROOT / "docs" / "config.md"


def _bounds(info: FieldInfo) -> str:
    parts = []
    for meta in info.metadata:
        for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("multiple_of", "multiple of")):
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{sym} {value}")
    return ", ".join(parts)


def _type_name(annotation) -> str:
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in get_args(annotation))
    if get_origin(annotation) in (list, tuple):
        return "list of " + _type_name(get_args(annotation)[0])
    if get_origin(annotation) is not None:
        return " \\| ".join(_type_name(a) for a in get_args(annotation)).replace("NoneType", "null")
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _default(info: FieldInfo, value) -> str:
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{value!r}`"


def render(model: type[BaseModel] = TrainConfig) -> str:
    lines = ["# Config reference", "",
             "Generated from the pydantic models by `python -m rollout.commands.config_reference`; "
             "do not edit by hand.",
             "Every section rejects unknown keys. Override any field on the command line with",
             "`--set section.field=value` (values are parsed as YAML scalars).", ""]
    defaults = model()

    def section(cls: type[BaseModel], instance: BaseModel, prefix: str) -> None:
        rows, subsections = [], []
        for name, info in cls.model_fields.items():
            value = getattr(instance, name)
            if isinstance(value, BaseModel):
                subsections.append((type(value), value, f"{prefix}{name}", info.description or ""))
                continue
            doc = (info.description or "").replace("\n", " ").replace("|", "\\|")
            rows.append(f"| `{prefix}{name}` | {_type_name(info.annotation)} | {_default(info, value)} | "
                        f"{_bounds(info)} | {doc} |")
        if rows:
            lines.extend([f"## `{prefix.rstrip('.') or 'root'}`", "", (cls.__doc__ or "").strip(), "",
                          "| key | type | default | bounds | meaning |", "|---|---|---|---|---|", *rows, ""])
        for sub_cls, sub_value, sub_prefix, _ in subsections:
            section(sub_cls, sub_value, sub_prefix + ".")

    section(model, defaults, "")
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
