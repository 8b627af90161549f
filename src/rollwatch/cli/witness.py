"""``rollwatch witness serve``: a C2SP tlog-witness that a third party runs.

It needs no rollwatch configuration: the logs it witnesses are given by their
public keys (``--log``, what the log serves at ``/public/key``), and it keeps its own
key (``--key``, made at first start) and state (``--state``).
"""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import anyio
import click

from rollwatch.cli._common import Context, common, run_async
from rollwatch.errors import UsageError


@click.group()
def witness() -> None:
    """A transparency-log witness (C2SP tlog-witness, cosignature/v1)."""


@witness.command("serve")
@click.option(
    "--listen", default="127.0.0.1:8090", show_default=True, help="HOST:PORT (port 0: any free one)"
)
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False),
    default="witness.key",
    show_default=True,
    help="the witness's Ed25519 key (PEM); made, mode 0600, when missing",
)
@click.option(
    "--log",
    "logs",
    multiple=True,
    required=True,
    help="the public key (vkey) of a log to witness, as its /public/key serves it; repeat for more logs",
)
@click.option(
    "--state",
    "state_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="where the latest cosigned checkpoint of each log is kept (default: next to the key, witness-state.json)",
)
@click.option("--name", default=None, help="the witness's key name (default: HOST/rollwatch-witness)")
@common
def witness_serve(
    ctx: Context,
    listen: str,
    key_file: str,
    logs: tuple[str, ...],
    state_file: str | None,
    name: str | None,
) -> None:
    """Cosign checkpoints of the given logs that are consistent with the last one cosigned."""
    # An empty value (`--state "$STATE"` with STATE unset) named the working folder:
    # "error: cannot use .: Is a directory", exit 1, naming no option; an empty --name
    # silently meant the default.
    for option, value in (("--key", key_file), ("--state", state_file), ("--name", name)):
        if value is not None and not value.strip():
            raise UsageError(f"{option}: is empty; give one, or leave the option out for its default")
    from rollwatch.integrity.checkpoint import NoteVerifier
    from rollwatch.integrity.witness import Witness, WitnessState, load_cosigner, witness_app
    from rollwatch.web.server import HTTPServer, listening_sockets

    host, sep, port_s = listen.rpartition(":")
    if not sep or not port_s.isdigit() or int(port_s) > 65535:
        raise UsageError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:8090")
    from rollwatch.config import listen_host_problem

    why = listen_host_problem(host) if host else None
    if why:
        raise UsageError(f"--listen {listen!r}: {why}")
    verifiers = []
    for vkey in logs:
        try:
            verifiers.append(NoteVerifier.from_vkey(vkey))
        except ValueError as e:
            raise UsageError(f"--log: {e}") from None
    state_path = Path(state_file) if state_file else Path(key_file).parent / "witness-state.json"
    try:
        state = WitnessState(state_path)
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"--state {state_path}: not a witness state file ({e})") from None
    # Bound here, before the event loop: a taken or foreign address is one line naming --listen.
    # And before the key is made: a busy port left a new witness key behind, which the next
    # start (on a free port) took for the witness's own, under a name no log trusted.
    sockets = listening_sockets(host.strip("[]"), int(port_s), "--listen")
    try:
        cosigner = load_cosigner(Path(key_file), name or f"{socket.gethostname()}/rollwatch-witness")
    except ValueError as e:
        for sock in sockets:
            sock.close()
        raise UsageError(f"--name: {e}") from None
    server = HTTPServer(
        witness_app(Witness(cosigner, verifiers, state)), host.strip("[]"), int(port_s), sockets=sockets
    )

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(server.run)
            click.echo(f"witness {cosigner.name} listening on http://{host}:{server.port}")
            click.echo(f"vkey {cosigner.vkey}")
            sys.stdout.flush()
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    server.stop()
                    break

    run_async(main)
