"""Publication: subscribers and their feed, the embargo, and the free public release.

Data flow: ``runs`` appends ``PublicationDecided`` with each score (subscribers at
once; public at ``not_before`` = score time + embargo, for positives). The
:func:`release_job` appends ``PublicReleased`` when a public decision falls due. The
projections (:func:`publication_projections`) turn those events into the subscriber
feed and the public release, which :func:`publication_routes` serves and
:func:`export_public` writes as static files. Subscribers and their keys are events
too (``rollwatch subscribers add|list|revoke``).

Layout: ``keys`` (API keys, the subscriber directory), ``projections``, ``release``,
``archive`` (one rollout's record), ``public`` (what is released), ``feeds`` (JSON
Feed, Atom, HTML and SVG), ``openapi``, ``routes``, ``export``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rollwatch.publication.export import ExportSummary, export_public
    from rollwatch.publication.keys import SubscriberDirectory, hash_key, new_key
    from rollwatch.publication.projections import (
        FeedProjection,
        PublicProjection,
        SubscribersProjection,
        publication_projections,
    )
    from rollwatch.publication.release import release_due, release_job, release_one
    from rollwatch.publication.routes import PublicationAPI, publication_routes

#: Where each name lives. The package imports its modules on first use (PEP 562), so a
#: command that only needs the subscriber keys does not load the web routes and Jinja2.
_WHERE = {
    "ExportSummary": "export",
    "export_public": "export",
    "SubscriberDirectory": "keys",
    "hash_key": "keys",
    "new_key": "keys",
    "FeedProjection": "projections",
    "PublicProjection": "projections",
    "SubscribersProjection": "projections",
    "publication_projections": "projections",
    "release_due": "release",
    "release_job": "release",
    "release_one": "release",
    "PublicationAPI": "routes",
    "publication_routes": "routes",
}

__all__ = [
    "ExportSummary",
    "FeedProjection",
    "PublicProjection",
    "PublicationAPI",
    "SubscriberDirectory",
    "SubscribersProjection",
    "export_public",
    "hash_key",
    "new_key",
    "publication_projections",
    "publication_routes",
    "release_due",
    "release_job",
    "release_one",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
