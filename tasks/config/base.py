"""What every config model shares: strict (an unknown field is an error) and frozen (trusted downstream)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def derived_defaults(cls, data: dict) -> dict:
        """Defaults that depend on another field; validation and `partial_fields` both apply them."""
        return data


PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
