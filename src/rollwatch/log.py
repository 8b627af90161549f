"""Structured logs: JSON lines off a terminal, a readable console on one.

One event per line with stable keys (``event``, ``level``, ``timestamp`` and the
context keys ``run_id``, ``rollout_id``, ``provider``, ``model``). The stdlib
logging of libraries (httpx, apscheduler, uvicorn) flows through the same
processors via ``ProcessorFormatter``, so an operator tails one format.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
import structlog.tracebacks
from structlog.typing import EventDict

_LEVELS = ("debug", "info", "warning", "error", "critical")


def configure_logging(level: str = "info", *, stream: TextIO | None = None, json: bool | None = None) -> None:
    """Route structlog and stdlib logging to ``stream`` (stderr by default).

    ``json`` defaults to "not a terminal": systemd's journal and log shippers get
    JSON lines, a person at a terminal gets colours and aligned keys.
    """
    out = stream if stream is not None else sys.stderr
    if json is None:
        json = not out.isatty()
    lvl = getattr(logging, level.upper(), None)
    if level.lower() not in _LEVELS or not isinstance(lvl, int):
        raise ValueError(f"log level {level!r} is not one of {', '.join(_LEVELS)}")

    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        _without_color_message,
    ]
    renderer: structlog.typing.Processor
    if json:
        renderer = structlog.processors.JSONRenderer()
        final: list[structlog.typing.Processor] = [
            # Frames without their local variables: structlog shows them by default, and a
            # provider client's frame holds the API key, a config's repr the store URL.
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            structlog.processors.UnicodeDecoder(),
        ]
    else:
        # Plain tracebacks whatever is installed (rich's show every frame's locals).
        renderer = structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        final = []

    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *final,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    # Libraries are chatty at INFO (one line per HTTP request); keep them at WARNING
    # unless the operator asks for debug.
    quiet = logging.DEBUG if lvl <= logging.DEBUG else logging.WARNING
    for name in ("httpx", "httpcore", "apscheduler", "aiosqlite", "asyncio"):
        logging.getLogger(name).setLevel(quiet)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    # uvicorn's INFO lines are the server's start and stop ("Started server process
    # [4242]"): the daemon says both itself (``daemon_listening``, ``daemon_stopped``),
    # under event names that do not change with the process id. Its warnings stay.
    logging.getLogger("uvicorn.error").setLevel(quiet)


def _without_color_message(_logger: Any, _name: str, event: EventDict) -> EventDict:
    """uvicorn passes each message again with terminal colour codes (``color_message``):
    one event per line keeps the plain one."""
    event.pop("color_message", None)
    return event


def get_logger(name: str, **context: Any) -> structlog.stdlib.BoundLogger:
    """A logger bound to ``context`` (use the stable keys: run_id, rollout_id, provider, model)."""
    # Lazy: a module-level logger made before configure_logging() still uses its config.
    return structlog.stdlib.get_logger(name, **context)
