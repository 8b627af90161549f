"""Every read model rollwatch keeps, gathered from the modules that own them.

A composition module: it imports every owner (runs and schedules, publication, the
report) and none of them imports it, so the base :mod:`rollwatch.projections` stays
free of its implementations and no import cycle can form.
"""

from __future__ import annotations

from rollwatch.projections import Projection, RunsProjection, SchedulesProjection
from rollwatch.publication.aggregates import PublicAggregatesProjection
from rollwatch.publication.projections import publication_projections
from rollwatch.report.aggregates import ReportAggregatesProjection
from rollwatch.report.views import ReleasesProjection
from rollwatch.web.console_model import ConsoleRunsProjection


def default_projections() -> list[Projection]:
    """Every read model rollwatch keeps, in the order one catch-up applies them."""
    return [
        RunsProjection(),
        SchedulesProjection(),
        *publication_projections(),
        ReleasesProjection(),
        ReportAggregatesProjection(),
        PublicAggregatesProjection(),
        ConsoleRunsProjection(),
    ]


def report_projections() -> list[Projection]:
    """The read models the report reads: every one (the report joins several)."""
    return default_projections()
