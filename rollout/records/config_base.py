"""Shared base for every configuration section.

Owns the conventions all config models follow: unknown keys are errors (``extra="forbid"``), defaults are
validated, every field carries a docstring (read by ``use_attribute_docstrings`` and by the generated config
reference), and models are plain data that is never evaluated as code. Each package defines its own section
model on top of :class:`ConfigModel`; ``rollout.config`` composes them into the root ``TrainConfig``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigModel(BaseModel):
    """Base class of every config section: strict keys, validated defaults, documented fields."""

    model_config = ConfigDict(
        extra="forbid",
        validate_default=True,
        validate_assignment=True,
        use_attribute_docstrings=True,
        protected_namespaces=(),
    )
