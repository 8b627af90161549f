"""``rollwatch witness serve``: a C2SP tlog-witness for rollwatch logs (see :mod:`rollwatch.integrity.witness`)."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import anyio
import click

from rollwatch.cli._common import run_async
from rollwatch.errors import UsageError
from rollwatch.log import get_logger

log = get_logger("rollwatch.witness")


@click.group()
def witness() -> None:
    """A witness that third parties run: it cosigns a log's checkpoints only while they stay consistent."""


@witness.command()
@click.option("--listen", default="127.0.0.1:8090", show_default=True, help="HOST:PORT to serve on")
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("witness.key"),
    show_default=True,
    help="the witness's Ed25519 key (PEM); made on first start, mode 0600",
)
@click.option("--name", default=None, help="the witness's name in its cosignatures (default: HOST/witness)")
@click.option(
    "--log",
    "logs",
    multiple=True,
    required=True,
    help="a log to witness: its checkpoint key (vkey; the origin is the key's name), or ORIGIN=VKEY; repeat for more",
)
@click.option(
    "--state",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="SQLite file of the latest cosigned checkpoint per log (default: witness.db beside the key)",
)
def serve(listen: str, key_file: Path, name: str | None, logs: tuple[str, ...], state: Path | None) -> None:
    """Serve POST /add-checkpoint (C2SP tlog-witness); stop on SIGTERM or Ctrl-C."""
    from rollwatch.integrity.checkpoint import NoteVerifier, check_key_name
    from rollwatch.integrity.cosignature import CosignatureSigner
    from rollwatch.integrity.keys import parse_private_key, write_new_key
    from rollwatch.integrity.witness import Witness, parse_log_option
    from rollwatch.log import configure_logging
    from rollwatch.web.server import HTTPServer, listening_sockets

    configure_logging("info")
    host, sep, port_s = listen.rpartition(":")
    if not sep or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise UsageError(f"--listen {listen!r}: give HOST:PORT, e.g. 127.0.0.1:8090")
    name = name or f"{socket.gethostname()}/witness"
    try:
        check_key_name(name)
    except ValueError as e:
        raise UsageError(f"--name: {e}") from None
    trusted: dict[str, list[NoteVerifier]] = {}
    for value in logs:
        try:
            origin, key = parse_log_option(value)
        except ValueError as e:
            raise UsageError(f"--log: {e}") from None
        trusted.setdefault(origin, []).append(key)
    private = (
        parse_private_key(key_file.read_bytes(), str(key_file))
        if key_file.exists()
        else write_new_key(key_file)
    )
    signer = CosignatureSigner(name, private)
    w = Witness(signer, trusted, state or key_file.with_name("witness.db"))
    sockets = listening_sockets(host.strip("[]"), int(port_s))
    click.echo(f"witness key: {signer.vkey}", err=True)

    async def main() -> None:
        server = HTTPServer(w.app(), host.strip("[]"), int(port_s), sockets=sockets)
        async with anyio.create_task_group() as tg:
            await tg.start(server.run)
            log.info("witness_serving", listen=listen, key=signer.vkey, logs=sorted(trusted))
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
            server.stop()
            await server.stopped.wait()
            tg.cancel_scope.cancel()

    run_async(main)
