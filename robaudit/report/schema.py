"""The published JSON Schema of reports, and validation against it."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any


@lru_cache(maxsize=1)
def report_schema() -> dict[str, Any]:
    text = resources.files("robaudit.report").joinpath("schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def validation_errors(report: dict[str, Any]) -> list[str]:
    """Schema violations of ``report`` (empty when valid). Needs the ``jsonschema`` package."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(report_schema())
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path))]
