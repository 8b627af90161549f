"""A loopback OpenAI-compatible server for daemon tests, run as a subprocess.

    python tests/fake_provider.py PORT_FILE REQUEST_LOG [DELAY_S]

It binds an ephemeral port on 127.0.0.1, writes the port to PORT_FILE, answers every
chat completion after DELAY_S with a short code answer, and appends one line per
answered request to REQUEST_LOG (flushed before the response is sent), so a test
can count what the provider served (and would bill).
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
from starlette.responses import JSONResponse
from starlette.routing import Route

PORT_FILE, LOG, DELAY = sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.05
# The answer's text: FAKE_PROVIDER_ANSWER when set (hostile text for the console's tests).
ANSWER = os.environ.get("FAKE_PROVIDER_ANSWER") or "```python\ndef solve():\n    return 42\n```"


async def chat(request: Request) -> JSONResponse:
    body = await request.json()
    await anyio.sleep(DELAY)
    rid = uuid.uuid4().hex
    with open(LOG, "a") as f:
        f.write(json.dumps({"id": rid, "model": body.get("model"), "t": time.time()}) + "\n")
        f.flush()
    return JSONResponse(
        {
            "id": rid,
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {
                        "role": "assistant",
                        "content": ANSWER,
                    },
                }
            ],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        }
    )


def main() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    config = uvicorn.Config(app, log_level="warning")
    server = uvicorn.Server(config)
    with open(PORT_FILE + ".tmp", "w") as f:
        f.write(str(port))
    os.replace(PORT_FILE + ".tmp", PORT_FILE)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
