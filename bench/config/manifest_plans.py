"""The plans a study's manifest records: its resolved profile, the plan of each `bench` call,
and their union, the configs the study planned (validate, reproduce, compare, the analysis and
the report read them). Config stage: the typed manifest (bench/core/manifest.py) below it, the
plan builder beside it; never the manifest's writer.
"""

from __future__ import annotations

from pydantic import ValidationError

from bench.config.plan import Cell, Plan, build_plan
from bench.config.profile import Profile
from bench.core.errors import BenchError
from bench.core.manifest import Manifest, as_manifest


def profile_from_manifest(manifest: Manifest | dict) -> Profile:
    try:
        return Profile.model_validate(as_manifest(manifest).profile.resolved)
    except ValidationError as exc:
        raise BenchError(f"the manifest's resolved profile no longer validates: {exc}") from None


def plans_from_manifest(manifest: Manifest | dict, profile: Profile | None = None) -> list[Plan]:
    """The plan of every recorded `bench` call (a migrated manifest that predates invocations has
    one, with its plan overrides)."""
    manifest = as_manifest(manifest)
    profile = profile or profile_from_manifest(manifest)
    return [build_plan(profile, **inv.plan_overrides.kwargs()) for inv in manifest.invocations]


def planned_cells(manifest: Manifest | dict | None, profile: Profile) -> list[Cell]:
    """The configs a study's `bench` calls planned: the union over its recorded invocations,
    each with the most runs any call asked for (the profile's full plan without a manifest)."""
    plans = plans_from_manifest(manifest, profile) if manifest else [build_plan(profile)]
    cells: dict[str, Cell] = {}
    for plan in plans:
        for c in plan.cells:
            if c.key not in cells or c.runs > cells[c.key].runs:
                cells[c.key] = c
    return list(cells.values())
