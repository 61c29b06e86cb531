"""Dagster's public surfaces, through the projection (core.projection): metadata and log lines.

Defs never hand Dagster a value of their own making: materialization metadata goes through
`metadata`, log lines through `log`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from overseer_dagster.core import projection


def metadata(surface: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` projected onto the surface's allowlist, as Dagster metadata. Withheld values are counted."""
    projected = projection.surface(surface, values)
    out: dict[str, Any] = {}
    for key, value in projected.value.items():
        if value is None:
            continue
        out[key] = dg.MetadataValue.json(value) if isinstance(value, (dict, list)) else value
    if projected.withheld:
        out["projection_withheld"] = len(projected.withheld)
    return out


def log(context: dg.AssetExecutionContext | dg.OpExecutionContext | dg.AssetCheckExecutionContext,
        level: str, template: str, **fields: Any) -> None:  # noqa: ANN401
    """A log line built from a fixed template and projected fields (see projection.line)."""
    getattr(context.log, level)(projection.line(template, **fields).value)
