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
    from rollwatch.integrity.witness import (
        Witness,
        WitnessState,
        hold_exclusively,
        load_cosigner,
        witness_app,
    )
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
    # A witness whose key is there but whose state is not may have cosigned checkpoints it no
    # longer knows of: started over, it cosigned any fork of them (its state file deleted, or
    # --state mistyped). Its state is made with its key, so only a witness that never had one
    # starts empty.
    if Path(key_file).exists() and not state_path.exists():
        raise UsageError(
            f"--state {state_path}: there is no such file, but the witness key {key_file} exists: this"
            " witness may have cosigned checkpoints its state no longer holds, and started over it could"
            " cosign a fork of them. Put the state file back, or, if this key never cosigned anything,"
            " write {} into it"
        )
    try:
        state = WitnessState(state_path)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UsageError(f"--state {state_path}: not a witness state file ({e})") from None
    if state.logs and not Path(key_file).exists():
        raise UsageError(
            f"--key {key_file}: there is no such file, but --state {state_path} holds checkpoints"
            " cosigned by this witness's key; give that key"
        )
    # Bound here, before the event loop: a taken or foreign address is one line naming --listen.
    # And before the key is made: a busy port left a new witness key behind, which the next
    # start (on a free port) took for the witness's own, under a name no log trusted.
    sockets = listening_sockets(host.strip("[]"), int(port_s), "--listen")

    def refuse(message: str) -> UsageError:
        for sock in sockets:
            sock.close()
        return UsageError(message)

    try:
        cosigner = load_cosigner(Path(key_file), name or f"{socket.gethostname()}/rollwatch-witness")
    except ValueError as e:
        raise refuse(f"--name: {e}") from None
    # One process per witness key: two (a second unit, a restart overlapping the old process)
    # each held the state in memory, and each cosigned its own fork.
    try:
        key_lock = hold_exclusively(Path(key_file))
    except OSError as e:
        raise refuse(f"--key {key_file}: {e}") from None
    try:
        state.check(cosigner)
    except ValueError as e:
        raise refuse(f"--state {state_path}: {e}") from None
    if not state_path.exists():
        try:
            state.save()
        except OSError as e:
            raise refuse(f"--state {state_path}: cannot be written ({e})") from None
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
    key_lock.close()
