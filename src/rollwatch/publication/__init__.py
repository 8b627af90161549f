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
