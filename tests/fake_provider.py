"""A loopback OpenAI-compatible server for daemon tests, run as a subprocess.

    python tests/fake_provider.py PORT_FILE REQUEST_LOG [DELAY_S [HOLD_AFTER]]

It binds an ephemeral port on 127.0.0.1, writes the port to PORT_FILE, answers every
chat completion after DELAY_S with a short code answer (or 401 to the key
``sk-rejected``, one line appended to ``REQUEST_LOG.rejected`` for each), and appends one line per
answered request to REQUEST_LOG (flushed before the response is sent), so a test
can count what the provider served (and would bill). ``GET /v1/models`` lists the
models it serves (``m1``, ``m2``), as OpenAI's API does. While the file
``REQUEST_LOG.down`` exists, every chat completion is answered 503 whatever its key (an
outage), one line appended to ``REQUEST_LOG.down.seen`` for each.

FAKE_PROVIDER_SCRIPT (JSON: a list of ``[MARKER, RESPONSE]``) scripts requests whose
body holds MARKER (a problem's prompt can carry one): RESPONSE ``{"status": N}`` answers
that HTTP status with an OpenAI error body (a final failure when not retryable, or
once retries run out), ``{"answer": TEXT}`` answers TEXT. The first matching rule
applies; a scripted error is not logged as answered (nothing is billed).

FAKE_PROVIDER_USAGE, when set, is the JSON text sent as every answer's ``usage`` (as is:
``null``, ``{"completion_tokens": NaN}`` or ``{"completion_tokens": 5000}``, say).

With HOLD_AFTER, requests after the first HOLD_AFTER answered are held (not answered)
until the file ``REQUEST_LOG.release`` exists; a held request whose client went away
in the meantime is never answered, so it is not counted (nor billed).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

PORT_FILE, LOG, DELAY = sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.05
HOLD_AFTER = int(sys.argv[4]) if len(sys.argv) > 4 else None
MODELS = ("m1", "m2")
answered = 0


async def models(request: Request) -> JSONResponse:
    return JSONResponse(
        {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "fake"} for m in MODELS]}
    )


REJECTED_KEY = "sk-rejected"
"""A key this server refuses with 401, as OpenAI refuses a revoked key."""

# The answer's text: FAKE_PROVIDER_ANSWER when set (hostile text for the console's tests).
ANSWER = os.environ.get("FAKE_PROVIDER_ANSWER") or "```python\ndef solve():\n    return 42\n```"
USAGE = os.environ.get("FAKE_PROVIDER_USAGE")
SCRIPT: list[tuple[str, dict[str, object]]] = [
    (str(marker), dict(response))
    for marker, response in json.loads(os.environ.get("FAKE_PROVIDER_SCRIPT") or "[]")
]


async def chat(request: Request) -> Response:
    if os.path.exists(LOG + ".down"):
        with open(LOG + ".down.seen", "a") as f:
            f.write(json.dumps({"t": time.time()}) + "\n")
        error = {"message": "The server is temporarily down.", "type": "server_error", "code": None}
        return JSONResponse({"error": error}, status_code=503)
    if request.headers.get("authorization") == f"Bearer {REJECTED_KEY}":
        error = {
            "message": "Incorrect API key provided.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
        with open(LOG + ".rejected", "a") as f:
            f.write(json.dumps({"t": time.time()}) + "\n")
        return JSONResponse({"error": error}, status_code=401)
    global answered
    raw = await request.body()
    body = json.loads(raw)
    await anyio.sleep(DELAY)
    text = ANSWER
    for marker, response in SCRIPT:
        if marker.encode() in raw:
            if "status" in response:
                error = {"message": f"scripted failure ({marker})", "type": "server_error", "code": None}
                return JSONResponse({"error": error}, status_code=int(str(response["status"])))
            text = str(response["answer"])
            break
    if HOLD_AFTER is not None and answered >= HOLD_AFTER:
        release = LOG + ".release"
        while not os.path.exists(release):
            await anyio.sleep(0.02)
        if await request.is_disconnected():
            return JSONResponse({"error": {"message": "client went away"}}, status_code=499)
    answered += 1
    rid = uuid.uuid4().hex
    with open(LOG, "a") as f:
        f.write(json.dumps({"id": rid, "model": body.get("model"), "t": time.time()}) + "\n")
        f.flush()
    answer = {
        "id": rid,
        "object": "chat.completion",
        "model": body.get("model"),
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {
                    "role": "assistant",
                    "content": text,
                },
            }
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }
    if USAGE is None:
        return JSONResponse(answer)
    del answer["usage"]
    return Response(json.dumps(answer)[:-1] + f', "usage": {USAGE}}}', media_type="application/json")


def main() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)]
    )
    config = uvicorn.Config(app, log_level="warning")
    server = uvicorn.Server(config)
    with open(PORT_FILE + ".tmp", "w") as f:
        f.write(str(port))
    os.replace(PORT_FILE + ".tmp", PORT_FILE)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
