"""The report: how often each model solves the problems, how sure we are, what it costs.

One computation, several renderings: :mod:`~rollwatch.report.views` reads the
projections into rows (the read model), :mod:`~rollwatch.report.stats` holds the
estimators, :mod:`~rollwatch.report.render` turns a report into JSON, CSV or a table.
"""

from rollwatch.report.aggregates import ReportAggregatesProjection
from rollwatch.report.render import Column, Report, to_csv, to_json, to_table
from rollwatch.report.stats import (
    ALPHA,
    KS,
    Z95,
    Expectation,
    expected_to_solve,
    fisher_exact,
    mean_pass_at_k,
    pass_at_k,
    wilson,
)
from rollwatch.report.views import (
    BY_CHOICES,
    By,
    Fetcher,
    KeptByRun,
    ReleaseRow,
    ReleasesProjection,
    Row,
    TrendRow,
    build_release_impact,
    build_report,
    build_trend,
    report_json,
)

__all__ = [
    "ALPHA",
    "BY_CHOICES",
    "KS",
    "Z95",
    "By",
    "Column",
    "Expectation",
    "Fetcher",
    "KeptByRun",
    "ReleaseRow",
    "ReleasesProjection",
    "Report",
    "ReportAggregatesProjection",
    "Row",
    "TrendRow",
    "build_release_impact",
    "build_report",
    "build_trend",
    "expected_to_solve",
    "fisher_exact",
    "mean_pass_at_k",
    "pass_at_k",
    "report_json",
    "to_csv",
    "to_json",
    "to_table",
    "wilson",
]
