"""The OpenAPI 3.1 document served at ``/openapi.json``.

Query parameters, their bounds and defaults come from the pydantic models the routes
validate with (:mod:`rollwatch.web.params`), so the document cannot drift from what
is enforced; path parameters use the same patterns the routes check. Every route the
daemon serves is described (``tests/publication/test_openapi.py`` compares the
document's paths with the app's routes).
"""

from __future__ import annotations

import functools
from typing import Any

from rollwatch.publication.projections import FEED_ITEM_KEYS
from rollwatch.web.params import (
    ROLLOUT_ID,
    ConsistencyQuery,
    EmptyQuery,
    FeedQuery,
    InclusionQuery,
    ProgressQuery,
    ReportQuery,
)


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


_ROLLOUT_PARAM = {
    "name": "rollout_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": ROLLOUT_ID.pattern},
}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_PROOF_BAD = _error(
    "A parameter is missing or invalid, or names a size beyond the latest signed checkpoint "
    "(proofs are served for signed tree sizes only)."
)


def _b64_list(description: str) -> dict[str, Any]:
    return {
        "type": "array",
        "items": {"type": "string", "contentEncoding": "base64"},
        "description": description,
    }


_OPERATION_PATHS: dict[str, Any] = {
    "/healthz": {
        "get": {
            "summary": "Whether the daemon is healthy",
            "responses": {
                "200": {
                    "description": "Healthy",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                },
                "503": {
                    "description": "Degraded: the log was tampered with, or a configured schedule "
                    "cannot run; the reasons say which (the schedules' names and why only to the operator: a "
                    "trusted peer or a bearer key with scope ops)",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                },
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (text format 0.0.4, or OpenMetrics when the Accept header asks)",
            "description": "Open to all, but every figure that counts or prices work (runs, rollouts, "
            "pass counts, requests, tokens, cost) appears only for the operator: a peer in "
            "server.trusted_peers or a bearer key with scope ops. Anyone else gets the process's "
            "figures, the providers' disabled and paused states and the witness gauges.",
            "security": [{}, {"bearer": []}],
            "responses": {"200": {"description": "The exposition", "content": _TEXT}},
        }
    },
}


def _page(summary: str, *params: str, method: str = "get") -> dict[str, Any]:
    """An operator console route (HTML, or JSON for the long poll)."""
    return {
        method: {
            "summary": summary,
            "description": "Operator only: a peer in server.trusted_peers, or a bearer key with scope ops.",
            "security": [{}, {"bearer": []}],
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
            ],
            "responses": {
                "200": {"description": "The page"},
                "401": _error("No operator credentials."),
                "403": _error("A key without the ops scope."),
            },
        }
    }


_CONSOLE_PATHS: dict[str, Any] = {
    "/": {"get": {"summary": "Redirects to /public/", "responses": {"302": {"description": "To /public/"}}}},
    "/ops": _page("Redirects to /ops/"),
    "/ops/": _page("The console: runs, with live progress"),
    "/ops/runs/{run_id}": _page("One run: model x problem heatmap, failures by cause", "run_id"),
    "/ops/rollouts/{rollout_id}": _page(
        "One rollout: prompt, attempts, answer, verdict, events", "rollout_id"
    ),
    "/ops/schedules": _page("Schedules: next fire, last outcome, pause/resume/trigger"),
    "/ops/schedules/{name}/{action}": _page(
        "Pause (with a note), resume or trigger a schedule (form: token, note)",
        "name",
        "action",
        method="post",
    ),
    "/ops/subscribers": _page("Subscribers: names, scopes, last use (never keys)"),
    "/ops/progress": {
        "get": {
            **_page("Long poll: running runs' figures once the log moves past `after`")["get"],
            "parameters": ProgressQuery.openapi_parameters(),
        }
    },
    "/ops/static/{name}": _page("The console's stylesheet and script", "name"),
    "/ops/rollouts/{rollout_id}/proof": _page(
        "One rollout's proof bundle: every event (embargoed ones too) with its inclusion proof (JSON)",
        "rollout_id",
    ),
    "/ops/problems": _page("Problems: versions, time limit, pass rate over all models"),
    "/ops/problems/{problem_id}": _page(
        "One problem: versions over time, time limit, pass rate per model (the id may contain '/')",
        "problem_id",
    ),
}


_INTEGRITY_PATHS: dict[str, Any] = {
    "/public/checkpoint": {
        "get": {
            "summary": "The latest signed checkpoint (C2SP tlog-checkpoint note) of the log's Merkle tree",
            "responses": {
                "200": {"description": "The signed note", "content": _TEXT},
                "404": _error("No checkpoint has been signed yet."),
            },
        }
    },
    "/public/key": {
        "get": {
            "summary": "The checkpoint signing key (Ed25519, public), as a note verifier key",
            "responses": {"200": {"description": "name+keyid+base64 key", "content": _TEXT}},
        }
    },
    "/public/key/rotations": {
        "get": {
            "summary": "The chain of checkpoint keys: each rotation, signed by the old key and the new one",
            "responses": {
                "200": {
                    "description": "{key: the key in force, rotations: [{seq, old_key, new_key, note, canonical, "
                    "leaf_hash}]}, oldest first",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    },
    "/checkpoint": {
        "get": {
            "summary": "C2SP tlog-tiles: the latest checkpoint, with the witnesses' cosignatures",
            "responses": {
                "200": {"description": "The signed note", "content": _TEXT},
                "404": _error("No checkpoint has been signed yet."),
            },
        }
    },
    "/tile/{path}": {
        "get": {
            "summary": "C2SP tlog-tiles: a hash tile <L>/<N>[.p/<W>], or an entry bundle entries/<N>[.p/<W>] "
            "(operator only: it holds every event)",
            "parameters": [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": "The tile's bytes", "content": {"application/octet-stream": {}}},
                "400": _error("Not a tile path of the spec."),
                "403": _error("An entry bundle, asked by someone other than the operator."),
                "404": _error(
                    "The latest signed checkpoint does not cover that tile yet (the operator's entry bundles: the tree does not hold it yet)."
                ),
            },
        }
    },
    "/public/tile/{path}": {
        "get": {
            "summary": "The same tiles under /public/, where a static export is usually hosted",
            "parameters": [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": "The tile's bytes", "content": {"application/octet-stream": {}}},
                "400": _error("Not a tile path of the spec."),
                "403": _error("An entry bundle, asked by someone other than the operator."),
                "404": _error(
                    "The latest signed checkpoint does not cover that tile yet (the operator's entry bundles: the tree does not hold it yet)."
                ),
            },
        }
    },
    "/public/proof/consistency": {
        "get": {
            "summary": "An RFC 9162 consistency proof between two tree sizes",
            "parameters": ConsistencyQuery.openapi_parameters(),
            "responses": {
                "200": {
                    "description": "The proof",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["from", "to", "path"],
                                "properties": {
                                    "from": {"type": "integer"},
                                    "to": {"type": "integer"},
                                    "path": _b64_list("The proof's hashes."),
                                },
                            }
                        }
                    },
                },
                "400": _PROOF_BAD,
            },
        }
    },
    "/public/proof/inclusion": {
        "get": {
            "summary": "An RFC 9162 inclusion proof of one event in a tree of a given size",
            "parameters": InclusionQuery.openapi_parameters(),
            "responses": {
                "200": {
                    "description": "The proof",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["seq", "leaf_index", "size", "leaf_hash", "path"],
                                "properties": {
                                    "seq": {"type": "integer"},
                                    "leaf_index": {"type": "integer", "description": "seq - 1"},
                                    "size": {"type": "integer"},
                                    "leaf_hash": {"type": "string", "contentEncoding": "base64"},
                                    "path": _b64_list("The proof's hashes."),
                                },
                            }
                        }
                    },
                },
                "400": _PROOF_BAD,
            },
        }
    },
}


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The API's description: health and metrics, subscriber routes (bearer key), the public
    release and the integrity routes. Built once; do not modify the result."""
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
                "Health": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok", "degraded", "tampered"]},
                        "first_bad_seq": {"type": ["integer", "null"]},
                        "reasons": {"type": "array", "items": {"type": "string"}},
                        "schedules": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                            "description": "Each configured schedule that cannot run, with why.",
                        },
                    },
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
            **_OPERATION_PATHS,
            **_CONSOLE_PATHS,
            "/v1/feed": {
                "get": {
                    "summary": "Events visible to subscribers after a cursor, oldest first",
                    "security": bearer,
                    "parameters": [
                        *FeedQuery.openapi_parameters(),
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
                        _ROLLOUT_PARAM,
                        *EmptyQuery.openapi_parameters(),
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
                        *ReportQuery.openapi_parameters(),
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
                    "parameters": [_ROLLOUT_PARAM],
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
            **_INTEGRITY_PATHS,
        },
    }
