"""Configuration: one TOML file, validated as a whole before anything starts.

Every problem is reported at once, each naming the file, the key path
(``providers[1].kind``) and what is allowed. Unknown keys are errors: a typo must
never be silently ignored. Relative paths resolve against the working directory,
as the example in SPEC §3 (``path = "config/problems"``) reads.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import math
import os
import re
import socket
import stat
import tomllib
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rollwatch.errors import ConfigError, UsageError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
#: The longest duration anything takes: 100 years ("5218w"). Longer ones (and inf, nan)
#: overflow the dates and timers they are added to.
MAX_DURATION = 100 * 365.25 * 86400.0


def parse_duration(value: object) -> float:
    """Seconds from "500ms", "30s", "10m", "6h", "90d", "2w" (or a bare number of seconds)."""
    if isinstance(value, bool):
        raise ValueError("a duration is a string such as '30s', '10m', '6h' or '90d'")
    seconds: float | None = None
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds is not None and math.isfinite(seconds):
        if seconds > MAX_DURATION:
            raise ValueError(f"{value!r} is longer than any duration rollwatch takes (at most 100 years)")
        return seconds
    raise ValueError(
        f"{value!r} is not a duration: use a number with a unit, ms s m h d w (e.g. '500ms', '90d')"
    )


#: The validation context :func:`parse_config` gives: the document came from a file.
_FROM_FILE = "from_file"


def _config_duration(value: object, info: ValidationInfo) -> float:
    # A bare number in the file is refused: ``embargo = 90`` meant 90 days to whoever wrote
    # it and was read as 90 seconds. Code that builds a config passes seconds.
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if number and info.context and info.context.get(_FROM_FILE):
        raise ValueError(
            f"{value!r} is not a duration: write it as a string with a unit, ms s m h d w (e.g. '{value}s')"
        )
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(_config_duration)]


def _redacted(value: str) -> str:
    """``value`` as an error line may quote it: a user name or password in it left out."""
    scheme, sep, rest = value.partition("://")
    netloc, slash, path = rest.partition("/")
    if sep and "@" in netloc:
        return f"{scheme}://…@{netloc.rpartition('@')[2]}{slash}{path}"
    return value


def _http_url(value: str) -> str:
    shown = _redacted(value)  # an error line goes to a terminal or the journal: no credential
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{shown!r}: must start with http:// or https://")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  # raises on a port that is not a number up to 65535
    except ValueError as e:
        raise ValueError(f"{shown!r}: not a URL ({_redacted(str(e))})") from None
    if not parts.hostname or any(c.isspace() for c in value):
        raise ValueError(f"{shown!r}: needs a host, e.g. https://rollwatch.example.org")
    return value.rstrip("/")


def _no_credentials(value: str) -> str:
    """A URL without a user name or password: a provider's (whose key goes in api_key_env or
    api_key_file; httpx sent one in the URL as Basic auth beside the key) or the server's
    public base URL (written into every feed and page)."""
    if "@" in urlsplit(value).netloc:
        raise ValueError(
            f"{_redacted(value)!r}: holds a user name or password; no credential goes in this URL"
            " (a provider's key goes in api_key_env or api_key_file)"
        )
    return value


def check_plain_url(value: str) -> None:
    """ValueError (its message starting with the URL, redacted) unless ``value`` is what
    :data:`PlainURL` takes: an absolute http(s) URL with a host and no credential."""
    _no_credentials(_http_url(value))


HttpURL = Annotated[str, AfterValidator(_http_url)]
"""An absolute http:// or https:// URL, kept without a trailing slash. A witness's may hold
a credential (``http://user:token@host``, sent as Basic auth), never shown."""
PlainURL = Annotated[str, AfterValidator(_http_url), AfterValidator(_no_credentials)]
"""An :data:`HttpURL` holding no user name or password."""
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]

_NO_CONTROL = "cannot hold control characters (line breaks, tabs, NUL, bidi marks)"


def has_control(text: str) -> bool:
    """Whether ``text`` holds a character that is no part of a one-line name: a control
    character (C0 or C1: a line break, a tab, NUL, an escape), a format character (a bidi
    override turns the rest of a table row around, a zero-width or soft hyphen hides) or
    a line or paragraph separator (U+2028 and U+2029 break lines for many readers)."""
    return any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text)


def _text(value: str, empty: str, what: str) -> str:
    """``value`` when it holds something and no control character, else a ValueError:
    ``empty`` is the whole message for nothing (it says what to write instead), ``what``
    names the thing in the other. Spaces at either end are stripped before (``_Strict``),
    so "   " is empty too. An empty path silently meant the default (or the working
    folder), an empty model or variable name meant nothing at all; a line break or NUL in
    a path or a name forged a line in tables and terminal logs, or failed later naming no key."""
    if not value:
        raise ValueError(empty)
    if has_control(value):
        raise ValueError(f"{value!r}: {what} {_NO_CONTROL}")
    return value


def _filled(empty: str, what: str) -> AfterValidator:
    """:func:`_text` as a pydantic validator."""
    return AfterValidator(lambda value: _text(value, empty, what))


FilePath = Annotated[str, _filled("is empty; name a file, or leave the key out for its default", "a path")]
"""An optional file's path: leaving the key out is how to ask for the default."""
ModelName = Annotated[str, _filled("a model name cannot be empty", "a model name")]


class _Strict(BaseModel):
    # inf and nan are TOML numbers, but no count, price or budget: they cannot be written
    # to the log (JSON) nor compared or added to a date. Strict: each key takes the TOML
    # type it names, no conversion ("yes" or 1 is no boolean, "2048" or 2048.0 no integer).
    model_config = ConfigDict(
        extra="forbid", frozen=True, str_strip_whitespace=True, allow_inf_nan=False, strict=True
    )


# ``?password=`` and ``?sslpassword=`` (libpq's parameters, which asyncpg takes too): a
# password given there was printed whole by every "cannot open the event log at URL" and
# shown to anyone by /healthz's "out of reach" reason. The value runs to the next ``&`` or
# ``#`` (an ``@`` in it included).
_PASSWORD_PARAM = re.compile(r"(?i)(password=)[^&#]*")


def redact_url(url: str) -> str:
    """``url`` without a password (in its user information or its query), for messages and logs."""
    url = _PASSWORD_PARAM.sub(r"\1***", url)
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    # Everything before the last ``@`` but the user name goes: an ``@`` left in the query
    # (``?application_name=a@b``) costs the reader the host, never the password.
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in creds else ''}@{host}"


def postgres_state_folder(url: str) -> str:
    """The folder a PostgreSQL log's state goes to, named after its server and database:
    ``pg-HOST-PORT-DATABASE`` (without ``$STATE_DIRECTORY``, under ``./var``)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    name = f"pg-{parts.hostname or 'localhost'}-{parts.port or 5432}-{parts.path.strip('/') or 'postgres'}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


_HOST_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?"
)


def listen_host_problem(host: str) -> str | None:
    """What is wrong with the HOST of a ``HOST:PORT`` to listen on, or None: an IP address
    (IPv6 in brackets) or a host name. Links and URLs are made from it (``http://HOST:PORT``),
    so a host no URL can carry ("[::1", "::1", "256.1.1.1") was a traceback in every command."""
    if "/" in host:
        return "give HOST:PORT alone, without a scheme or a path"
    if host.startswith("[") or host.endswith("]"):
        inner = host[1:-1] if host.startswith("[") and host.endswith("]") else None
        try:
            if inner is None:
                raise ValueError
            ipaddress.IPv6Address(inner)
        except ValueError:
            return "an IPv6 address in brackets, e.g. [::1]:8080, needs a valid address inside them"
        return None
    if ":" in host:
        return "an IPv6 address goes in brackets, e.g. [::1]:8080"
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host!r} is not an IPv4 address"
        return None
    if not _HOST_NAME.fullmatch(host):
        return f"{host!r} is not a host name or IP address"
    return None


class StoreConfig(_Strict):
    url: str = "sqlite:var/events.db"
    projections: FilePath | None = None
    """Where read models live (a SQLite file); default: next to a SQLite log, else
    ``$STATE_DIRECTORY``, else ``./var/pg-HOST-PORT-DATABASE/``."""
    retry: Duration = Field(default=60.0, ge=0.0, le=3600.0)
    """PostgreSQL: how long a lost connection is retried before the operation fails."""
    busy_timeout: Duration = Field(default=30.0, gt=0.0, le=3600.0)
    """SQLite: how long an append waits for a lock another process holds on the log (a
    ``sqlite3`` shell inside a transaction, say) before it fails."""

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if not (v.startswith(("sqlite:", "postgresql://", "postgres://"))):
            raise ValueError(
                f"{redact_url(v)!r}: use sqlite:PATH (sqlite:///abs/path.db) or postgresql://user@host/db"
            )
        if has_control(v):
            raise ValueError(f"{redact_url(v)!r}: a URL {_NO_CONTROL}")
        # "postgresql://" alone is libpq's every default (local socket, the user's own
        # database), so only a SQLite URL can name nothing: before, "(top level):
        # PosixPath('.') has an empty name".
        if v.startswith("sqlite:") and not v.removeprefix("sqlite:").strip("/ "):
            raise ValueError(f"{v!r} names no file; use sqlite:PATH (sqlite:///abs/path.db)")
        if not v.startswith("sqlite:"):
            from urllib.parse import urlsplit

            try:
                urlsplit(v).port  # noqa: B018 (raises ValueError when out of range or not a number)
            except ValueError:
                raise ValueError("the port must be a number up to 65535") from None
        else:
            # A folder or a FIFO: every command said "there is no event log", or serve and
            # run "unable to open database file" / "disk I/O error".
            from rollwatch._sqlite_url import sqlite_file  # here: importing this module loads no other

            path = sqlite_file(v)
            if path.is_dir():
                raise ValueError(
                    f"{v!r} names a folder; name the log's file in it, e.g. sqlite:{path}/events.db"
                )
            if path.exists() and not path.is_file():
                raise ValueError(f"{v!r} names no regular file (a FIFO or a device?); name the log's file")
        return v

    @field_validator("projections")
    @classmethod
    def _projections_file(cls, v: str | None) -> str | None:
        if v and Path(v).is_dir():
            raise ValueError(f"{v!r} is a folder; name a file in it, e.g. {v.rstrip('/')}/projections.db")
        return v

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file of ``url`` (``sqlite:///abs`` is absolute, ``sqlite:rel`` relative)."""
        if not self.url.startswith("sqlite:"):
            return None
        from rollwatch._sqlite_url import sqlite_file

        return sqlite_file(self.url)

    @property
    def projections_path(self) -> Path:
        """The SQLite file that holds projections (read models, rebuilt from the log)."""
        if self.projections:
            return Path(self.projections)
        base = self.sqlite_path
        if base is None:
            # Never a ./var shared by every PostgreSQL log run from this folder: another
            # log's tree and witness would be taken for this one's (a false alarm).
            state = os.environ.get("STATE_DIRECTORY")
            if state:
                return Path(state.split(":")[0]) / "projections.db"
            return Path("var") / postgres_state_folder(self.url) / "projections.db"
        return base.with_name(base.stem + ".projections.db")


class ServerConfig(_Strict):
    listen: str = "127.0.0.1:8080"
    feed_rate_per_minute: int = Field(default=600, ge=1)
    base_url: PlainURL | None = None
    """The URL the service is reached at, for links in the feeds (default ``http://LISTEN``,
    with a wildcard host or port 0 made concrete from the socket a request came in on).
    Links never copy a request's ``Host`` header: a client could make them point anywhere."""
    trusted_peers: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    """Networks whose requests count as the operator's (``/metrics`` in full); others need
    a key with scope ``ops``. Behind a reverse proxy on this host, set ``[]``."""
    request_head_timeout: Duration = Field(default=10.0, gt=0.0, le=300.0)
    """How long a client may take to send a request's line and headers (slowloris)."""

    @field_validator("trusted_peers")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not an IP network (e.g. '127.0.0.0/8', '::1/128')") from None
        return v

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        # ASCII digits, five at most: ``isdigit`` also takes "²" and 5,000 digits, which
        # ``int`` refuses with Python's own words instead of this message.
        if not sep or not host or not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
            raise ValueError(f"{v!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
        why = listen_host_problem(host)
        if why:
            raise ValueError(f"{v!r}: {why}")
        return v

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def url(self) -> str:
        """``base_url``, or ``http://LISTEN``, without a trailing slash."""
        return self.base_url or f"http://{self.listen}"


class PublicationConfig(_Strict):
    embargo: Duration = parse_duration("90d")
    positive: Literal["passed"] = "passed"
    release_check: Duration = Field(default=1.0, gt=0.0, le=86400.0)
    """How often the release job looks for decisions whose embargo has passed (at most a
    day: longer only releases results that late)."""
    embargo_counts: bool = True
    """Whether the public page announces, per model, how many problems are solved under
    embargo and when the next release is due (counts only; off for operators who sell them)."""


class ScoringConfig(_Strict):
    workers: int | None = Field(default=None, ge=1, le=256)
    """Parallel scoring processes; default: the number of cores."""
    require_isolation: bool = True
    """Refuse to score without namespace isolation (bubblewrap or unshare)."""
    # At most 1 TiB: 2**63 overflowed the sandbox's setrlimit on every sample.
    memory_mb: int = Field(default=1024, ge=64, le=1024 * 1024)
    timeout: Duration = Field(default=10.0, gt=0.0)
    isolation: Literal["auto", "bwrap", "unshare", "none"] = "auto"
    """auto: bubblewrap, else unshare (as root). "none" only when written out (and require_isolation = false)."""
    uid_base: int = Field(default=60000, ge=1000, le=2**31 - 2**16)
    uid_count: int = Field(default=1024, ge=1, le=65536)
    """As root, every pool on the host takes its own range of these uids for its samples."""
    cgroups: bool = True
    """Count memory and processes per sample in a cgroup v2 where one can be made (systemd: Delegate=yes)."""
    time_limit_factor: float = Field(default=4.0, ge=1.0, le=1000.0)
    """A problem without its own timeout: this multiple of its reference solution's runtime..."""
    time_limit_floor: Duration = Field(default=1.0, gt=0.0)
    """...and at least this long."""
    rescore: Literal["auto", "manual"] = "manual"
    """auto: the daemon re-scores archived answers in the background when it finds a
    changed problem (at start, on SIGHUP); manual: only ``rollwatch rescore`` does."""

    @model_validator(mode="after")
    def _none_needs_the_interlock_off(self) -> ScoringConfig:
        # Known from the file alone: before, every command that scores read it as
        # "error: ...", exit 1 (a check failed), without the file, once it had started.
        if self.isolation == "none" and self.require_isolation:
            raise ValueError(
                'isolation = "none" needs require_isolation = false as well (it is true by default): '
                "write both to score without isolation, or remove isolation"
            )
        return self


class ProblemSetConfig(_Strict):
    name: Name
    path: Annotated[str, _filled("is empty; name the problem set's folder or HumanEval file", "a path")]
    format: Literal["folder", "humaneval"] = "folder"
    prompt_template: str | None = None

    @field_validator("prompt_template")
    @classmethod
    def _placeholder(cls, v: str | None) -> str | None:
        # Known from the file alone: before, the set failed to load when a schedule ran.
        if v is not None and "{prompt}" not in v:
            raise ValueError("has no {prompt} placeholder; add one where the problem's text goes")
        return v


#: The highest price taken, USD per million tokens ($1 a token, over a thousand times the
#: dearest model's): ``input = 1e308`` made every answer's cost infinite, which no event
#: can hold, and ``rollwatch run`` died with a traceback at its first answer, no
#: RunFinished recorded.
MAX_PRICE = 1_000_000.0


class Price(_Strict):
    input: float = Field(ge=0, le=MAX_PRICE)
    output: float = Field(ge=0, le=MAX_PRICE)
    cached_input: float | None = Field(default=None, ge=0, le=MAX_PRICE)
    batch_input: float | None = Field(default=None, ge=0, le=MAX_PRICE)
    """USD per million input tokens through the batch API (default: half of ``input``,
    OpenAI's, Anthropic's and Gemini's batch discount)."""
    batch_output: float | None = Field(default=None, ge=0, le=MAX_PRICE)
    """USD per million output tokens through the batch API (default: half of ``output``)."""


ProviderKind = Literal["openai", "anthropic", "gemini", "reference"]
#: Provider kinds whose batch API rollwatch speaks.
BATCH_KINDS = ("openai", "anthropic", "gemini")

#: The request fields rollwatch sets itself, per provider API ("responses": OpenAI's
#: Responses API): ``[schedules.params]`` may not set them. The adapters refuse them too;
#: here a schedule that would fail every request is refused before anything starts.
RESERVED_PARAMS: dict[str, frozenset[str]] = {
    "openai": frozenset({"model", "messages"}),
    "responses": frozenset({"model", "input", "instructions"}),
    "anthropic": frozenset({"model", "messages", "system"}),
    "gemini": frozenset({"contents", "systemInstruction", "model"}),
}


def camel_case(name: str) -> str:
    """``system_instruction`` as Gemini's JSON names it (``systemInstruction``)."""
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), name)


DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com/v1beta",
    "reference": "",
}


class ProviderConfig(_Strict):
    name: Name
    kind: ProviderKind
    base_url: PlainURL | None = None
    api_key_env: (
        Annotated[
            str, _filled("is empty; name the environment variable that holds the key", "a variable name")
        ]
        | None
    ) = None
    api_key_file: (
        Annotated[
            str, _filled("is empty; name the file (or systemd credential) that holds the key", "a path")
        ]
        | None
    ) = None
    max_concurrency: int = Field(default=8, ge=1, le=10000)
    # Bounded below: at 1e-308 a minute the next request's time was infinity, waited for.
    requests_per_minute: float | None = Field(default=None, ge=0.001)
    tokens_per_minute: float | None = Field(default=None, ge=1)
    timeout: Duration = Field(default=600.0, gt=0.0)
    max_attempts: int = Field(default=6, ge=1, le=100)
    max_rollout_time: Duration = Field(default=3600.0, gt=0.0)
    """Cap on the total time of one rollout, all retries and waits included."""
    backoff_base: Duration = Field(default=1.0, gt=0.0)
    backoff_max: Duration = Field(default=120.0, gt=0.0)
    system_prompt: str | None = None
    prices: dict[str, Price] = Field(default_factory=dict)
    api: Literal["chat", "responses"] = "chat"
    """OpenAI only: Chat Completions (``chat``, every compatible host) or the Responses
    API (``responses``: reasoning summaries, reasoning tokens)."""
    stream: bool | None = None
    """Stream answers (server-sent events); unset: only requests that ask for reasoning
    or more than 32,000 output tokens."""
    stream_idle_timeout: Duration = Field(default=120.0, gt=0.0)
    """A stream silent this long is a failed (retried) attempt."""
    batch: bool = False
    """Send this provider's rollouts through its batch API (schedules may override)."""
    batch_poll: Duration = Field(default=60.0, gt=0.0)
    """How often an open batch is polled."""
    batch_linger: Duration = 5.0
    """How long a batch waits for more rollouts before it is submitted."""
    batch_max_requests: int = Field(default=10000, ge=1, le=50000)
    """Rollouts per batch at most (OpenAI takes 50,000, Anthropic 100,000)."""
    batch_max_time: Duration = Field(default=72 * 3600.0, gt=0.0)
    """How long a submitted batch may take, its polls and results download included,
    before its rollouts fail for good (``batch_timeout``): a provider whose batch never
    ends must not hold the run forever. The vendors end theirs within 24 to 48 hours."""

    @field_validator("api_key_env")
    @classmethod
    def _variable(cls, v: str | None) -> str | None:
        if v is not None and ("=" in v or any(c.isspace() for c in v)):
            raise ValueError(
                f"{v!r} cannot name an environment variable (no '=', spaces or control characters)"
            )
        return v

    @field_validator("prices")
    @classmethod
    def _price_models(cls, v: dict[str, Price]) -> dict[str, Price]:
        for model in v:
            _text(model.strip(), "a model name cannot be empty", "a model name")
        return v

    @model_validator(mode="after")
    def _key_source(self) -> ProviderConfig:
        if self.kind != "reference" and self.api_key_env and self.api_key_file:
            raise ValueError("set only one of api_key_env and api_key_file")
        if self.api == "responses" and self.kind != "openai":
            raise ValueError(f"api = 'responses' is OpenAI's; kind {self.kind!r} has only its own API")
        if self.batch and self.kind not in BATCH_KINDS:
            raise ValueError(f"batch = true needs a provider with a batch API ({', '.join(BATCH_KINDS)})")
        return self

    @property
    def url(self) -> str:
        """``base_url``, or the vendor SDK's default for this kind."""
        return self.base_url or DEFAULT_BASE_URLS[self.kind]

    def has_key(self) -> bool:
        """Whether an API key can be read (without reading it)."""
        if self.kind == "reference":
            return True
        if self.api_key_env:
            return bool(os.environ.get(self.api_key_env))
        if self.api_key_file:
            return _credential_path(self.api_key_file).is_file()
        return False

    def missing_key(self) -> str:
        """Why no API key can be read, naming where it was looked for."""
        if self.api_key_env:
            return (
                f"api_key_env: the environment variable {self.api_key_env} is not set, empty, or holds "
                "spaces or characters other than printable ASCII; set it, or use api_key_file"
            )
        if self.api_key_file:
            return (
                f"api_key_file: {str(_credential_path(self.api_key_file))!r} cannot be read, is empty, "
                "or holds spaces or characters other than printable ASCII, or is not a regular file of "
                f"at most {KEY_FILE_MAX} bytes"
            )
        return f"no API key: set api_key_env or api_key_file for a provider of kind {self.kind!r}"

    def read_key(self) -> str | None:
        """The API key from the environment or a (systemd credential) file; None when
        there is none, or when it holds a character an HTTP header cannot carry (a space,
        a NUL, a line break inside, a non-ASCII letter): httpx would refuse the request
        with an error that quotes the header, the key in it, into the log."""
        key: str | None = None
        if self.api_key_env:
            key = os.environ.get(self.api_key_env, "").strip()
        elif self.api_key_file:
            key = _read_small_file(_credential_path(self.api_key_file))
        if not key or not all("!" <= c <= "~" for c in key):
            return None
        return key


KEY_FILE_MAX = 64 * 1024
"""The largest ``api_key_file`` read (a key is a few hundred bytes at most)."""


def _read_small_file(path: Path) -> str | None:
    """The text of ``path`` with its surrounding space removed, or None when it cannot be
    read, is not a regular file (a FIFO, ``/dev/zero``: read whole, one blocked the event
    loop and the other filled memory) or holds more than :data:`KEY_FILE_MAX` bytes.
    Opened without blocking (a FIFO with no writer), checked once open (no swap between a
    check and the read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > KEY_FILE_MAX:
            return None
        data = os.read(fd, KEY_FILE_MAX + 1)
        if len(data) > KEY_FILE_MAX:
            return None
        return data.decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)


CREDENTIAL_PREFIX = "rollwatch_"
"""What systemd puts before each file's name when the unit loads a whole folder of
credentials: ``LoadCredential=rollwatch:/etc/rollwatch/credentials`` (systemd 251 or
later) gives ``$CREDENTIALS_DIRECTORY/rollwatch_openai`` for the folder's ``openai``."""


def credential_file(name: str) -> Path | None:
    """The systemd credential called ``name`` given to this service, if any:
    ``$CREDENTIALS_DIRECTORY/NAME`` (``LoadCredential=NAME:/path``), else
    ``$CREDENTIALS_DIRECTORY/rollwatch_NAME`` (the file NAME of a loaded folder)."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not creds or "/" in name or name in ("", ".", ".."):
        return None
    for candidate in (Path(creds) / name, Path(creds) / f"{CREDENTIAL_PREFIX}{name}"):
        if candidate.is_file():
            return candidate
    return None


def _credential_path(value: str) -> Path:
    """A bare name is a systemd credential (see :func:`credential_file`) when the service
    has one by that name; otherwise (and for any path) the file itself."""
    if "/" not in value:
        found = credential_file(value)
        if found is not None:
            return found
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if creds:
            return Path(creds) / value
    return Path(value)


class ScheduleConfig(_Strict):
    name: Name
    provider: str
    models: list[ModelName] = Field(min_length=1)
    problem_set: str
    rollouts: int = Field(default=1, ge=1, le=100000)
    every: Duration | None = None
    cron: str | None = None
    timezone: str = "UTC"
    jitter: Duration = 0.0
    budget_usd: float | None = Field(default=None, ge=0)
    catch_up: Duration | None = None
    """Missed fires within this window collapse into one run at start; older ones are only
    counted (default: no window, missed fires however old make that one run)."""
    params: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True
    optional: bool = False
    """Whether a missing API key only makes this schedule inactive. Otherwise a schedule
    that cannot run (no key, a problem set that did not load, its provider disabled
    after a 401) makes /healthz report degraded and ``schedules trigger`` refuse it."""
    batch: bool | None = None
    """Send this schedule's rollouts through the provider's batch API (default: the
    provider's ``batch``)."""

    @model_validator(mode="after")
    def _one_trigger(self) -> ScheduleConfig:
        if (self.every is None) == (self.cron is None):
            raise ValueError("set exactly one of every (e.g. '24h') and cron (e.g. '0 3 * * *')")
        if self.every is not None and self.every < 1:
            raise ValueError("every must be at least 1s")
        if self.every is not None and self.jitter >= self.every:
            # A fire delayed by up to the whole period (or a century) is no schedule.
            raise ValueError(f"jitter ({self.jitter:g}s) must be shorter than every ({self.every:g}s)")
        return self

    @field_validator("models")
    @classmethod
    def _each_model_once(cls, v: list[str]) -> list[str]:
        # Both entries planned the same rollouts (the same rollout ids): half of them
        # conflicted and the run ended partial.
        for i, model in enumerate(v):
            if model in v[:i]:
                raise ValueError(f"{model!r} is listed twice")
        return v

    @field_validator("params")
    @classmethod
    def _json_params(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            _text(name.strip(), "a parameter name cannot be empty", "a parameter name")
        # Sent as JSON and recorded in the log: a TOML date or time, inf or nan is neither.
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(
                "params are sent as JSON: use strings, finite numbers, booleans, lists and tables "
                "(no dates or times, inf or nan; quote a date)"
            ) from None
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            # OSError: a folder of the zone database ("America", "Etc") or a name too long
            # for a file, which was "error: cannot use …/zoneinfo/America", exit 1.
            raise ValueError(f"{v!r} is not an IANA time zone (e.g. 'UTC', 'Europe/Paris')") from None
        return v

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from datetime import UTC, datetime

        from rollwatch.cron import crontab

        try:
            trigger = crontab(v)
        except ValueError as e:
            raise ValueError(f"{v!r} is not a crontab expression (min hour day month dow): {e}") from None
        if trigger.get_next_fire_time(None, datetime.now(UTC)) is None:
            # A date no month has (30 February): the schedule would wait for good.
            raise ValueError(f"{v!r} never fires: no month has that day")
        return v


_KEY_NAME = re.compile(r"[^\s+]+")


class WitnessConfig(_Strict):
    """One ``[[integrity.witnesses]]`` entry: a C2SP tlog-witness and its cosignature key."""

    url: HttpURL
    """The witness's submission prefix (``POST {url}/add-checkpoint``)."""
    key: str
    """Its public key as a vkey: ``<name>+<hex key ID>+base64(0x04 ‖ Ed25519 key)``."""

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        # The shape only (the witnessing module checks the key ID when it loads it).
        v = v.strip()
        name, _, rest = v.partition("+")
        hex_id, _, key = rest.partition("+")
        try:
            raw = base64.b64decode(key, validate=True)
        except ValueError:
            raw = b""
        if (
            not _KEY_NAME.fullmatch(name)
            or not re.fullmatch(r"[0-9a-f]{8}", hex_id)
            or raw[:1] != b"\x04"
            or len(raw) != 33
        ):
            raise ValueError(
                f"{v!r} is not a witness key: expected NAME+KEYID+BASE64 of 0x04 and a 32-byte Ed25519 key "
                "(what `rollwatch witness serve` prints)"
            )
        return v


class IntegrityConfig(_Strict):
    """``[integrity]``: how often checkpoints are signed, under which name and key.

    Every key is optional::

        [integrity]
        origin = "rollwatch.example/log"   # the log's name in checkpoints (and the key's)
        checkpoint_every = 1000            # sign after this many events ...
        checkpoint_interval = "10m"        # ... or this long, whichever comes first (and at shutdown)
        scrub_interval = "5m"              # re-read and check the whole log this often
        scrub_timeout = "1h"               # ... stopping a pass that runs longer (/healthz degraded)
        key_file = "/var/lib/rollwatch/checkpoint.key"   # default <state dir>/checkpoint.key
        # key_name = "..."                 # default: origin
        # tree = "var/merkle.db"           # default: merkle.db next to the projections
        witness_quorum = 1                 # cosignatures before a checkpoint counts as witnessed
        witnesses = [{ url = "https://witness.example.org", key = "witness.example.org/w1+1a2b3c4d+BAj..." }]

    The state directory is ``$STATE_DIRECTORY`` (systemd ``StateDirectory=``) or else the
    projections' folder. A systemd credential ``checkpoint-key`` takes precedence over the
    key file (see :mod:`rollwatch.integrity.keys`).
    """

    origin: str = "rollwatch.example/log"
    """The log's name on the first line of every checkpoint; a schema-less URL is recommended."""
    key_name: str | None = None
    """The signing key's name (default: ``origin``)."""
    key_file: FilePath | None = None
    """The Ed25519 private key (PEM); made at first start (default ``<state dir>/checkpoint.key``)."""
    tree: FilePath | None = None
    """The Merkle tree's SQLite file (default ``merkle.db`` next to the projections)."""
    checkpoint_every: int = Field(default=1000, ge=1)
    """Sign a checkpoint once this many events were appended since the last one."""
    checkpoint_interval: Duration = Field(default=600.0, ge=1.0, le=86400.0)
    """Sign a checkpoint at least this often when anything was appended (at most a day:
    what is appended stays unsigned, and unwitnessed, that long)."""
    scrub_interval: Duration = Field(default=300.0, ge=0.1, le=7 * 86400.0)
    """Start a full re-read of the log (chain, tree leaves, checkpoints) this often; a pass
    over 10⁶ events takes 15-25 s (paced to half a core, at nice 19, in a process of its own)."""
    scrub_timeout: Duration = Field(default=3600.0, ge=1.0, le=7 * 86400.0)
    """The longest one pass may run: it is then stopped, and ``/healthz`` is degraded until a
    pass passes (a pass whose process was stopped, or that waits on a file that never
    answers, would otherwise hold every later one while ``/healthz`` said ok)."""
    witnesses: list[WitnessConfig] = Field(default_factory=list)
    """C2SP tlog-witnesses each new checkpoint is submitted to (``{url, key}`` each)."""
    witness_quorum: int = Field(default=0, ge=0)
    """How many witnesses must cosign a checkpoint before it counts as witnessed."""
    witness_timeout: Duration = Field(default=10.0, gt=0.0)
    """How long one submission to a witness may take."""

    @model_validator(mode="after")
    def _quorum(self) -> IntegrityConfig:
        if self.witness_quorum > len(self.witnesses):
            raise ValueError(
                f"witness_quorum = {self.witness_quorum} is more than the {len(self.witnesses)} witnesses configured"
            )
        return self

    @field_validator("origin")
    @classmethod
    def _origin(cls, v: str) -> str:
        if not v or any(c.isspace() for c in v) or "+" in v:
            raise ValueError(
                f"{v!r}: the origin must be non-empty, without spaces or '+' (e.g. 'example.org/rollwatch')"
            )
        return v

    @field_validator("key_name")
    @classmethod
    def _key_name(cls, v: str | None) -> str | None:
        if v is not None and not _KEY_NAME.fullmatch(v):
            raise ValueError(f"{v!r}: a key name must be non-empty, without spaces or '+'")
        return v

    @property
    def name(self) -> str:
        """The key name checkpoints are signed under."""
        return self.key_name or self.origin

    def state_dir(self, store: StoreConfig) -> Path:
        """``$STATE_DIRECTORY`` (its first entry), else the projections' folder."""
        state = os.environ.get("STATE_DIRECTORY")
        if state:
            return Path(state.split(":")[0])
        return store.projections_path.parent

    def key_path(self, store: StoreConfig) -> Path:
        """Where the signing key is kept."""
        return Path(self.key_file) if self.key_file else self.state_dir(store) / "checkpoint.key"

    def witness_path(self, store: StoreConfig) -> Path:
        """Where the last signed checkpoint is remembered apart from the log."""
        return self.state_dir(store) / "checkpoint.last"

    def tree_path(self, store: StoreConfig) -> Path:
        """The Merkle tree's SQLite file."""
        return Path(self.tree) if self.tree else store.projections_path.parent / "merkle.db"


class ClusterConfig(_Strict):
    """How several daemons on one PostgreSQL log share the rollouts of a run."""

    lease: Duration = Field(default=30.0, ge=1.0, le=3600.0)
    """How long a node holds a chunk of work without renewing (it renews every third of
    it); a dead node's chunks go to the others this long after it died."""
    chunk: int = Field(default=16, ge=1, le=10_000)
    """Rollouts (samples of one model on one problem) per chunk of work."""


class Config(_Strict):
    node: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        max_length=255,
    )
    store: StoreConfig = StoreConfig()
    server: ServerConfig = ServerConfig()
    publication: PublicationConfig = PublicationConfig()
    scoring: ScoringConfig = ScoringConfig()
    integrity: IntegrityConfig = IntegrityConfig()
    cluster: ClusterConfig = ClusterConfig()
    problem_sets: list[ProblemSetConfig] = Field(default_factory=list)
    providers: list[ProviderConfig] = Field(default_factory=list)
    schedules: list[ScheduleConfig] = Field(default_factory=list)

    @field_validator("node", mode="before")
    @classmethod
    def _node(cls, v: object) -> object:
        # A name, printed in every RunStarted and lease: not empty, no control characters,
        # no spaces at either end (two nodes "" and " " would look the same). Checked as
        # written, before the spaces are stripped; its own words (it was told "use letters,
        # digits, '.', '_' or '-'", which a node name need not).
        if isinstance(v, str) and not v.strip():
            raise ValueError("is empty; name this daemon, or leave the key out for host name and process id")
        if isinstance(v, str) and (v != v.strip() or has_control(v)):
            raise ValueError(f"{v!r}: a node name holds no control characters and no spaces at either end")
        return v

    @model_validator(mode="after")
    def _references(self) -> Config:
        problems: list[str] = []
        for field, items in (
            ("problem_sets", self.problem_sets),
            ("providers", self.providers),
            ("schedules", self.schedules),
        ):
            seen: set[str] = set()
            for i, item in enumerate(items):
                assert isinstance(item, ProblemSetConfig | ProviderConfig | ScheduleConfig)
                if item.name in seen:
                    problems.append(f"{field}[{i}].name: {item.name!r} is defined twice")
                seen.add(item.name)
        providers = [p.name for p in self.providers]
        sets = [s.name for s in self.problem_sets]
        for i, s in enumerate(self.schedules):
            if s.provider not in providers:
                problems.append(f"schedules[{i}].provider: {s.provider!r} is not one of {_alts(providers)}")
            if s.problem_set not in sets:
                problems.append(f"schedules[{i}].problem_set: {s.problem_set!r} is not one of {_alts(sets)}")
            kind = next((p.kind for p in self.providers if p.name == s.provider), None)
            problems += self._params_problems(i, s)
            if s.batch and kind is not None and kind not in BATCH_KINDS:
                problems.append(
                    f"schedules[{i}].batch: provider {s.provider!r} is of kind {kind!r}, which has no "
                    f"batch API rollwatch speaks ({', '.join(BATCH_KINDS)})"
                )
        problems += self._shared_files()
        if problems:
            raise _CrossRefError(problems)
        return self

    def _params_problems(self, i: int, schedule: ScheduleConfig) -> list[str]:
        """A problem for params the provider's adapter would refuse on every request."""
        provider = next((p for p in self.providers if p.name == schedule.provider), None)
        if provider is None:
            return []
        api = "responses" if provider.api == "responses" else provider.kind
        reserved = RESERVED_PARAMS.get(api, frozenset())
        clash = sorted(k for k in schedule.params if k in reserved or camel_case(k) in reserved)
        problems = []
        if clash:
            them = "them" if len(clash) > 1 else "it"
            problems.append(
                f"schedules[{i}].params: {', '.join(clash)} may not be set: rollwatch sets {them} "
                f"for provider {provider.name!r} (kind {provider.kind!r})"
            )
        if schedule.params.get("stream"):
            problems.append(
                f"schedules[{i}].params.stream: not for schedules; set stream = true on the provider instead"
            )
        return problems

    def _shared_files(self) -> list[str]:
        """A problem for each file two of rollwatch's files would be (the log's included).

        ``store.projections`` naming the log's own file made ``rollwatch rebuild`` replace
        the log with a link to the new read models: every event was lost, exit 0. The Merkle
        tree, the checkpoint key (written as ``KEY.pending``, then renamed over ``KEY``), the
        witness file and the origin file are written in place or replaced the same way.
        """
        store, integrity = self.store, self.integrity
        key = integrity.key_path(store)
        state = integrity.state_dir(store)
        files: list[tuple[str, str, Path, bool]] = []  # (key, what, path, written out)
        log = store.sqlite_path
        if log is not None:
            for suffix in ("", "-wal", "-shm"):
                what = f"the event log's {suffix} file" if suffix else "the event log"
                files.append(("store.url", what, Path(f"{log}{suffix}"), True))
        files += [
            ("store.projections", "the read models' file", store.projections_path, bool(store.projections)),
            ("integrity.tree", "the Merkle tree's file", integrity.tree_path(store), bool(integrity.tree)),
            ("integrity.key_file", "the checkpoint key", key, bool(integrity.key_file)),
            ("integrity.key_file", "the checkpoint key as it is made", Path(f"{key}.pending"), False),
            ("integrity", "the last signed checkpoint's file", integrity.witness_path(store), False),
            ("integrity", "the origin file", state / "origin", False),
        ]
        problems: list[str] = []
        seen: dict[Path, tuple[str, str, Path, bool]] = {}
        for name, what, path, explicit in files:
            where = Path(os.path.abspath(path))
            with contextlib.suppress(OSError, RuntimeError):
                where = where.resolve()
            other = seen.get(where)
            if other is None:
                seen[where] = (name, what, path, explicit)
                continue
            o_name, o_what, o_path, o_explicit = other
            # Name the key the operator wrote (the later one when both or neither were).
            mine, theirs = (name, what, path, explicit), (o_name, o_what, o_path, o_explicit)
            if o_explicit and not explicit:
                mine, theirs = theirs, mine
            problems.append(
                f"{mine[0]}: {str(mine[2])!r} would be {mine[1]} and {theirs[1]} too "
                f"({theirs[0]}{'' if theirs[3] else ', by default'}); each needs a file of its own"
            )
        return problems

    def provider(self, name: str) -> ProviderConfig:
        """The provider called ``name`` (names are validated to exist)."""
        return next(p for p in self.providers if p.name == name)

    def problem_set(self, name: str) -> ProblemSetConfig:
        """The problem set called ``name``."""
        return next(p for p in self.problem_sets if p.name == name)

    def schedule(self, name: str) -> ScheduleConfig:
        """The schedule called ``name``; a ConfigError naming the known ones otherwise."""
        for s in self.schedules:
            if s.name == name:
                return s
        raise UsageError(f"no schedule {name!r}; known: {_alts([s.name for s in self.schedules])}")


class _CrossRefError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def _alts(names: list[str]) -> str:
    return ", ".join(names) if names else "(none defined)"


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "is-instance[")) or "[" in part:
            continue  # pydantic's internal validator names, not config keys
        else:
            out += ("." if out else "") + (part if re.match(r"^[A-Za-z_][\w-]*$", part) else f'"{part}"')
    return out or "(top level)"


_MISSING = object()

#: What a key of each type takes, for "the TOML gave another type" errors.
_EXPECTED = {
    "bool_type": "a boolean (true or false, unquoted)",
    "int_type": "an integer (unquoted, e.g. 1024)",
    "float_type": "a number (unquoted, e.g. 4.0)",
    "string_type": "a string (quoted)",
    "list_type": "a list ([ ... ])",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}
_BOUNDS = {
    "greater_than": ("gt", "more than"),
    "greater_than_equal": ("ge", "at least"),
    "less_than": ("lt", "less than"),
    "less_than_equal": ("le", "at most"),
}


def _given(data: object, loc: tuple[int | str, ...]) -> object:
    """The value the document holds at ``loc`` (as written, before any conversion)."""
    for part in loc:
        if (isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)) or (
            isinstance(data, dict) and part in data
        ):
            data = data[part]  # type: ignore[index]
        elif isinstance(part, str) and (part.startswith(("function-", "is-instance[")) or "[" in part):
            continue
        else:
            return _MISSING
    return data


def _shown(value: object) -> str:
    """A value as the operator wrote it in TOML, for a message on one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return f"{value!r}"


def _message(err: Mapping[str, Any], given: object = _MISSING) -> str:
    kind = err["type"]
    msg = str(err["msg"])
    ctx = err.get("ctx") or {}
    value = err.get("input") if given is _MISSING else given
    if kind == "extra_forbidden":
        return "unknown key (a typo?); remove it or check the spelling against the README"
    if kind == "literal_error":
        return f"{err['input']!r} is not one of {ctx.get('expected', '').replace(' or ', ', ')}"
    if kind == "missing":
        return "required key is missing"
    if kind == "string_pattern_mismatch":
        return f"{err['input']!r}: use letters, digits, '.', '_' or '-' (at most 64)"
    if kind in _EXPECTED:
        return f"{_shown(value)} is not {_EXPECTED[kind]}"
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        bound = ctx.get(key)
        # A duration was converted to seconds: say the bound in seconds too.
        limit = f"{bound:g}s" if isinstance(value, str) and isinstance(bound, int | float) else f"{bound}"
        return f"{_shown(value)}: must be {words} {limit}"
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def parse_config(data: dict[str, Any], path: str = "<config>") -> Config:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    try:
        return Config.model_validate(data, context={_FROM_FILE: True})
    except ValidationError as e:
        problems: list[str] = []
        for err in e.errors():
            if err["type"] == "value_error" and isinstance(
                (err.get("ctx") or {}).get("error"), _CrossRefError
            ):
                problems.extend(err["ctx"]["error"].problems)
                continue
            problems.append(f"{_loc(err['loc'])}: {_message(err, _given(data, err['loc']))}")
        raise ConfigError(path, problems) from None


def default_config_path() -> Path:
    """``$ROLLWATCH_CONFIG``, else ./config/rollwatch.toml, else /etc/rollwatch/rollwatch.toml."""
    env = os.environ.get("ROLLWATCH_CONFIG")
    if env:
        return Path(env)
    local = Path("config/rollwatch.toml")
    if local.exists():
        return local
    return Path("/etc/rollwatch/rollwatch.toml")


#: No configuration comes near this; a file that does is not one (a log, a dump, a disk image).
MAX_CONFIG_BYTES = 10 * 1024 * 1024


def _read_config(p: Path) -> bytes:
    """The file's bytes, or a ConfigError when it is no regular file or too large. Opened
    without blocking and checked before it is read: ``--config /dev/zero`` was read until
    the kernel killed the process, a named pipe was waited on for good."""
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise ConfigError(str(p), ["is a folder; name the TOML file in it"])
        raise ConfigError(str(p), ["is not a regular file (a device, a pipe or a socket); name a TOML file"])
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(str(p), [f"is larger than {MAX_CONFIG_BYTES // 2**20} MB; is it the right file?"])
    return raw


def load_config(path: Path | str | None = None) -> Config:
    """Read and validate the configuration file; raise ConfigError on any problem."""
    p = Path(path) if path is not None else default_config_path()
    try:
        raw = _read_config(p)
    except OSError as e:
        raise ConfigError(str(p), [f"cannot read the file: {e.strerror or e}"]) from None
    try:
        # A byte order mark carries nothing in UTF-8, and editors on Windows (Notepad) write
        # one unasked: tomllib read it as "not valid TOML" at line 1, column 1.
        data = tomllib.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ConfigError(str(p), ["the file is not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(p), [f"not valid TOML: {e}"]) from None
    except RecursionError:
        raise ConfigError(str(p), ["not valid TOML: arrays or tables nested too deep"]) from None
    return parse_config(data, str(p))
