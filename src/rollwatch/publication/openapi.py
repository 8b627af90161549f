"""The OpenAPI 3.1 document served at ``/openapi.json`` (written by hand, kept beside the routes)."""

from __future__ import annotations

from typing import Any

from rollwatch.publication.projections import FEED_ITEM_KEYS


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_UNAUTHORIZED = _error("Missing, unknown, expired or revoked key. No data.")
_FORBIDDEN = _error("The key lacks the scope this route needs.")
_RATE = {
    **_error("Too many requests for this key; retry after the number of seconds in Retry-After."),
    "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
}
_BAD = _error("A query parameter is invalid; the message names it.")
_NOT_MODIFIED = {"description": "Unchanged since the ETag sent in If-None-Match."}
_ETAG = {"ETag": {"schema": {"type": "string"}, "description": "send back in If-None-Match"}}
_INM = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "An ETag from an earlier response: 304 when the response would be the same.",
}

_NULLABLE_STR = {"type": ["string", "null"]}
_ITEM_PROPS: dict[str, Any] = {
    "seq": {"type": "integer", "description": "The event's position in the log: the cursor."},
    "id": {"type": "string", "description": "The event's UUID."},
    "type": {
        "type": "string",
        "enum": [
            "RunStarted",
            "RunFinished",
            "RolloutScored",
            "RolloutFailed",
            "PublicationDecided",
            "PublicReleased",
        ],
    },
    "at": {"type": "string", "format": "date-time"},
    "hash": {"type": "string", "description": "The event's hash in the log's chain (hex SHA-256)."},
    "run_id": _NULLABLE_STR,
    "rollout_id": _NULLABLE_STR,
    "provider": _NULLABLE_STR,
    "model": _NULLABLE_STR,
    "problem_id": _NULLABLE_STR,
    "sample": {"type": ["integer", "null"]},
    "passed": {"type": ["boolean", "null"], "description": "RolloutScored: whether the tests passed."},
    "score": {"type": ["number", "null"]},
    "cost_usd": {"type": ["number", "null"], "description": "The rollout's (or run's) cost so far."},
    "audience": {"type": ["string", "null"], "enum": ["subscribers", "public", None]},
    "not_before": {"type": ["string", "null"], "format": "date-time"},
    "status": {
        "type": ["string", "null"],
        "description": "RunFinished: the run's status; RolloutFailed: 'failed'.",
    },
    "detail": {"type": "object", "description": "Fields particular to the type."},
}
assert tuple(_ITEM_PROPS) == FEED_ITEM_KEYS


def openapi_document() -> dict[str, Any]:
    """The API's description: subscriber routes (bearer key) and the public release."""
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rollwatch",
            "version": "1",
            "description": (
                "Results of LLMs on programming problems. Subscribers read every event at once "
                "with `Authorization: Bearer KEY`; positive results are released publicly after "
                "the embargo."
            ),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                },
                "FeedItem": {
                    "type": "object",
                    "required": list(FEED_ITEM_KEYS),
                    "properties": _ITEM_PROPS,
                },
                "Feed": {
                    "type": "object",
                    "required": ["items", "next"],
                    "properties": {
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/FeedItem"}},
                        "next": {
                            "type": "integer",
                            "description": "Pass as `after` to get the items that follow.",
                        },
                    },
                },
            },
        },
        "paths": {
            "/v1/feed": {
                "get": {
                    "summary": "Events visible to subscribers after a cursor, oldest first",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "after",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "default": 0},
                            "description": "Cursor: the `next` of the previous page (a seq).",
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                        },
                        {
                            "name": "wait",
                            "in": "query",
                            "schema": {"type": "number", "minimum": 0, "maximum": 60, "default": 0},
                            "description": "Long poll: wait up to this many seconds for an item when "
                            "there is none yet; returns as soon as one arrives.",
                        },
                        _INM,
                    ],
                    "responses": {
                        "200": {
                            "description": "A page of items",
                            "headers": _ETAG,
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Feed"}}
                            },
                        },
                        "304": _NOT_MODIFIED,
                        "400": _BAD,
                        "401": _UNAUTHORIZED,
                        "403": _FORBIDDEN,
                        "429": _RATE,
                    },
                }
            },
            "/v1/rollouts/{rollout_id}": {
                "get": {
                    "summary": "The whole archived record of one rollout",
                    "description": "Run, request as sent per attempt, responses and failures, the "
                    "answer and reasoning, the score, the publication state, and the "
                    "seq and hash of every event.",
                    "security": bearer,
                    "parameters": [
                        {"name": "rollout_id", "in": "path", "required": True, "schema": {"type": "string"}},
                        _INM,
                    ],
                    "responses": {
                        "200": {
                            "description": "The record",
                            "headers": _ETAG,
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "304": _NOT_MODIFIED,
                        "400": _BAD,
                        "401": _UNAUTHORIZED,
                        "403": _FORBIDDEN,
                        "404": _error("No rollout with this id."),
                        "429": _RATE,
                    },
                }
            },
            "/v1/report": {
                "get": {
                    "summary": "The report (as `rollwatch report --format json`)",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "by",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                "enum": ["model", "problem", "run"],
                                "default": "model",
                            },
                        },
                        {"name": "trend", "in": "query", "schema": {"type": "boolean", "default": False}},
                        {
                            "name": "release_impact",
                            "in": "query",
                            "schema": {"type": "boolean", "default": False},
                        },
                        {
                            "name": "problem_version",
                            "in": "query",
                            "description": "verdicts under this version (content hash, or a prefix of"
                            " at least 4 characters) of one problem, instead of each rollout's newest",
                            "schema": {"type": "string"},
                        },
                        _INM,
                    ],
                    "responses": {
                        "200": {
                            "description": "A list of rows",
                            "headers": _ETAG,
                            "content": {
                                "application/json": {"schema": {"type": "array", "items": {"type": "object"}}}
                            },
                        },
                        "304": _NOT_MODIFIED,
                        "400": _BAD,
                        "401": _UNAUTHORIZED,
                        "403": _FORBIDDEN,
                        "429": _RATE,
                        "503": _error("The report is not available on this server."),
                    },
                }
            },
            "/public/": {
                "get": {
                    "summary": "HTML page of released results with a chart of pass rates over time",
                    "responses": {
                        "200": {"description": "HTML", "content": {"text/html": {}}},
                        "304": _NOT_MODIFIED,
                    },
                }
            },
            "/public/feed.json": {
                "get": {
                    "summary": "JSON Feed 1.1 of released results",
                    "description": "Each item's _rollwatch object holds the result and, when the log is "
                    "signed, its RolloutScored event (seq, leaf_index, canonical, leaf_hash) and an "
                    "inclusion proof {size, path} against the latest checkpoint (rollwatch audit --item).",
                    "responses": {
                        "200": {"description": "JSON Feed", "content": {"application/feed+json": {}}},
                        "304": _NOT_MODIFIED,
                    },
                }
            },
            "/public/feed.atom": {
                "get": {
                    "summary": "Atom 1.0 feed of released results",
                    "responses": {
                        "200": {"description": "Atom", "content": {"application/atom+xml": {}}},
                        "304": _NOT_MODIFIED,
                    },
                }
            },
            "/public/results.jsonl": {
                "get": {
                    "summary": "Every released result, one JSON object per line",
                    "responses": {
                        "200": {"description": "JSON lines", "content": {"application/x-ndjson": {}}}
                    },
                }
            },
            "/public/rollouts/{rollout_id}.json": {
                "get": {
                    "summary": "One released result with its answer",
                    "parameters": [
                        {"name": "rollout_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {"description": "The released result", "content": {"application/json": {}}},
                        "404": _error("Not released (or no such rollout)."),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
                }
            },
        },
    }
