"""A sweep's fields validated one by one: what the cross-field rules (tasks.config.rules) read when the sweep
as a whole is invalid, so that every problem is listed at once (tasks.config.load)."""

from __future__ import annotations

import functools
from typing import Annotated, Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from tasks.config.base import Strict
from tasks.config.schema import SizeConfig, SweepConfig


@functools.cache
def _field_adapter(model: type[BaseModel], name: str) -> TypeAdapter:
    field = model.model_fields[name]
    return TypeAdapter(Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation)


def section_model(model: type[BaseModel], name: str) -> type[Strict] | None:
    annotation = model.model_fields[name].annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, Strict) else None


def partial_fields(model: type[Strict], raw: Any) -> dict[str, Any]:
    """`raw`'s fields validated one by one, defaults for those absent, the invalid ones left out: the values the
    cross-field rules read when the model as a whole is invalid. Sections and an inline ladder's sizes recurse,
    so one bad field leaves out only itself."""
    if not isinstance(raw, dict):
        return {}
    raw = model.derived_defaults(raw)
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if name not in raw and field.is_required():
            continue
        value = raw[name] if name in raw else field.get_default(call_default_factory=True)
        if (section := section_model(model, name)) is not None:
            out[name] = partial_fields(section, raw.get(name, {}))
        elif model is SweepConfig and name == "ladder" and isinstance(value, list):
            out[name] = [partial_fields(SizeConfig, s) for s in value]
        else:
            try:
                out[name] = _field_adapter(model, name).validate_python(value)
            except ValidationError:
                continue
    return out
