"""Query parameters, parsed strictly, for every route, declared once as pydantic models.

Each route's query is a :class:`QueryModel`: the route validates with it and
``/openapi.json`` is generated from its JSON schema, so a limit lives in one place.
A typo or a malformed value is a 400 naming the parameter, never a silent default
and never a 500: integers are ASCII digits only (``str.isdigit`` and ``int`` both
accept digits such as "²" or "٣", which ``int`` then refuses or reads in ways a
client did not mean), bounded, and at most 19 digits long before any conversion.
The 400's message is built from the same schema (the bounds it states are the ones
checked).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from starlette.requests import Request

from rollwatch.errors import BadRequest

_INTEGER = re.compile(r"[0-9]{1,19}", re.ASCII)
_NUMBER = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?", re.ASCII)

MAX_SEQ = (1 << 62) - 1
"""The largest seq or tree size a query may name."""
MAX_LIMIT = 1000
"""The most items one ``/v1/feed`` page holds."""
DEFAULT_LIMIT = 100
MAX_WAIT = 60.0
"""The longest ``/v1/feed`` long poll, in seconds."""
ROLLOUT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
"""What a ``{rollout_id}`` in a path must look like."""


def _show(raw: str) -> str:
    return repr(raw[:40] + ("…" if len(raw) > 40 else ""))


def _ascii_integer(raw: object) -> object:
    if isinstance(raw, str):
        if not _INTEGER.fullmatch(raw):
            raise ValueError("not an integer")
        return int(raw)
    return raw


def _ascii_number(raw: object) -> object:
    if isinstance(raw, str):
        v = float(raw) if _NUMBER.fullmatch(raw) else math.nan
        if not math.isfinite(v):
            raise ValueError("not a number")
        return v
    return raw


def _flag(raw: object) -> object:
    if isinstance(raw, str):
        low = raw.lower()
        if low in ("1", "true", "yes", ""):
            return True
        if low in ("0", "false", "no"):
            return False
        raise ValueError("not a flag")
    return raw


AsciiInt = Annotated[int, BeforeValidator(_ascii_integer)]
"""An integer written as plain ASCII digits (bounds: ``Field(ge=, le=)``)."""
Seconds = Annotated[float, BeforeValidator(_ascii_number)]
"""A number of seconds written as ASCII digits with an optional fraction."""
Flag = Annotated[bool, BeforeValidator(_flag)]
"""Present and empty, 1/true/yes, or 0/false/no."""


def query(request: Request, allowed: set[str], *, strict: bool = True) -> dict[str, str]:
    """The query parameters; unknown ones refused when ``strict``, repeated ones always."""
    params: dict[str, str] = {}
    for k, v in request.query_params.multi_items():
        if k not in allowed:
            if not strict:
                continue
            known = ", ".join(sorted(allowed)) or "none"
            raise BadRequest(f"unknown query parameter {k[:40]!r} (known: {known})")
        if k in params:
            raise BadRequest(f"query parameter {k!r} is given more than once")
        params[k] = v
    return params


class QueryModel(BaseModel):
    """A route's query parameters: validation and their OpenAPI description in one.

    ``strict``: whether unknown parameters are refused (subscriber routes) or ignored
    (public routes, which proxies and caches decorate with their own).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    strict: ClassVar[bool] = True

    @classmethod
    def parse(cls, request: Request) -> Self:
        """The request's query as this model; a :class:`BadRequest` naming the parameter."""
        names = {f.alias or n for n, f in cls.model_fields.items()}
        params = query(request, names, strict=cls.strict)
        try:
            return cls.model_validate(params)
        except ValidationError as e:
            first = e.errors()[0]
            name = str(first["loc"][0]) if first["loc"] else "?"
            prop = cls.model_json_schema().get("properties", {}).get(name, {})
            if first["type"] == "missing":
                raise BadRequest(f"missing query parameter {name!r} ({_expected(prop)})") from None
            raise BadRequest(
                f"{name}: expected {_expected(prop)}, got {_show(params.get(name, ''))}"
            ) from None

    @classmethod
    def openapi_parameters(cls) -> list[dict[str, Any]]:
        """The OpenAPI ``parameters`` of this query (``in: query``), from the model's schema."""
        schema = cls.model_json_schema()
        required = set(schema.get("required", ()))
        out = []
        for name, prop in schema.get("properties", {}).items():
            prop = {k: v for k, v in prop.items() if k != "title"}
            description = prop.pop("description", None)
            param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
            if description:
                param["description"] = description
            param["schema"] = prop
            out.append(param)
        return out


def _expected(prop: dict[str, Any]) -> str:
    """What a parameter must be, in words, from its JSON schema."""
    lo, hi = prop.get("minimum"), prop.get("maximum")
    if "enum" in prop:
        return "one of " + ", ".join(str(v) for v in prop["enum"])
    if prop.get("type") == "integer":
        return f"an integer from {lo} to {hi}"
    if prop.get("type") == "number":
        return f"a number of seconds from {lo:g} to {hi:g}"
    if prop.get("type") == "boolean":
        return "true or false"
    return "a valid value"


# -- every route's query ------------------------------------------------------------------------


class FeedQuery(QueryModel):
    """``/v1/feed``."""

    after: AsciiInt = Field(
        0,
        ge=0,
        le=MAX_SEQ,
        description="Cursor: the `next` of the previous page (a seq, at most the log's head).",
    )
    limit: AsciiInt = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="Items at most in this page.")
    wait: Seconds = Field(
        0.0,
        ge=0,
        le=MAX_WAIT,
        description="Long poll: wait up to this many seconds for an item when there is none "
        "yet; returns as soon as one arrives.",
    )


class ProgressQuery(QueryModel):
    """``/ops/progress`` (the console's long poll)."""

    after: AsciiInt = Field(0, ge=0, le=MAX_SEQ, description="Answer once the log is past this seq.")
    wait: Seconds = Field(0.0, ge=0, le=30.0, description="Long poll: wait up to this many seconds.")


class ReportQuery(QueryModel):
    """``/v1/report``."""

    by: Literal["model", "problem", "run"] = Field("model", description="Rows per model, problem or run.")
    trend: Flag = Field(False, description="Add each row's pass rate over time.")
    release_impact: Flag = Field(False, description="Add how results changed around problem releases.")
    problem_version: str | None = Field(
        None,
        max_length=100,
        description="Verdicts under this version (content hash, or a prefix of at least 4 characters) "
        "of one problem, instead of each rollout's newest.",
    )


class EmptyQuery(QueryModel):
    """A subscriber route that takes no query parameters."""


class ConsistencyQuery(QueryModel):
    """``/public/proof/consistency``."""

    strict: ClassVar[bool] = False
    from_: AsciiInt = Field(alias="from", ge=0, le=MAX_SEQ, description="The older tree size.")
    to: AsciiInt = Field(ge=0, le=MAX_SEQ, description="The newer tree size.")


class InclusionQuery(QueryModel):
    """``/public/proof/inclusion``."""

    strict: ClassVar[bool] = False
    seq: AsciiInt = Field(ge=1, le=MAX_SEQ, description="The event's seq (its leaf is seq - 1).")
    size: AsciiInt = Field(ge=1, le=MAX_SEQ, description="The tree size the proof is for.")
