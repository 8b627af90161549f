"""The checkpoint signing key: made at first start, or handed over by systemd.

Where it comes from, first match wins:

1. ``$CREDENTIALS_DIRECTORY/checkpoint-key`` (systemd ``LoadCredential=checkpoint-key:/path``),
   or ``rollwatch_checkpoint-key`` (the file ``checkpoint-key`` of the credentials folder
   the unit loads): the operator made the key and keeps it elsewhere; it is never written.
2. The configured key file (default ``<state dir>/checkpoint.key``): read if it
   exists, otherwise generated and written with mode 0600 before anything is signed.
   A new key is written beside it first (``checkpoint.key.pending``) and takes the key
   file's name just before its first signature (:func:`promote_key`): a key file means a
   key that has signed, so that a log with no checkpoint anywhere beside it was replaced
   (see ``Checkpointer``), and a daemon stopped before its first checkpoint (the tree of
   a big log takes a while) does not make its own log look replaced at the next start.

The file holds an unencrypted PKCS #8 PEM Ed25519 key, what
``openssl genpkey -algorithm ed25519`` writes; a bare 32-byte seed is accepted too.
Losing the key does not lose the log, but a new key starts a new line of signed
checkpoints that auditors must be told about (they pin the old one).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from rollwatch.config import credential_file
from rollwatch.errors import ConfigError, UnfitFile
from rollwatch.integrity.checkpoint import NoteSigner, read_small_file
from rollwatch.log import get_logger

log = get_logger(__name__)

CREDENTIAL_NAME = "checkpoint-key"


def credential_path() -> Path | None:
    """The systemd credential holding the key, when the service was given one (by its own
    ``LoadCredential=`` line, or as the file ``checkpoint-key`` of the loaded folder)."""
    return credential_file(CREDENTIAL_NAME)


KEY_FILE_MAX = 1 << 16
"""The largest key file read (a PEM Ed25519 key is 119 bytes)."""


def read_key_file(path: Path) -> bytes:
    """The bytes of the key file ``path``; ConfigError naming it when what is there cannot be
    one (see :func:`read_small_file`: a pipe in its place held ``verify`` and ``serve`` for
    good). A missing file raises FileNotFoundError, as before."""
    try:
        return read_small_file(path, KEY_FILE_MAX)
    except UnfitFile as e:
        raise ConfigError(str(path), [f"the key file cannot be a key: {e}"]) from None


def parse_private_key(data: bytes, source: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (PKCS #8) or a raw 32-byte seed; ConfigError naming ``source``."""
    if len(data) == 32 and not data.startswith(b"-----"):
        return Ed25519PrivateKey.from_private_bytes(data)
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(source, [f"not an unencrypted PEM private key: {e}"]) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(source, [f"the key is {type(key).__name__}, not Ed25519"])
    return key


def write_new_key(path: Path, key: Ed25519PrivateKey | None = None) -> Ed25519PrivateKey:
    """Write ``key`` (a new one if None) to ``path``, 0600 from the first byte; an existing file wins."""
    key = key or Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Created 0600 from the first byte (never chmod-ed after the fact), synced, then
    # linked into place without replacing: two first starts racing keep one key.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        tmp.unlink()
        return _read_key(path)
    tmp.unlink()
    _fsync_dir(path.parent)
    log.info("checkpoint_key_created", path=str(path))
    return key


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_key(path: Path) -> Ed25519PrivateKey:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "checkpoint_key_permissions",
            path=str(path),
            mode=oct(stat.S_IMODE(mode)),
            fix=f"chmod 600 {path}",
        )
    return parse_private_key(read_key_file(path), str(path))


def pending_key_path(key_file: Path) -> Path:
    """Where a new key waits for its first signature (see :func:`promote_key`)."""
    return key_file.with_name(key_file.name + ".pending")


def promote_key(key_file: Path) -> None:
    """Give a pending key the key file's name (synced), before it first signs; nothing
    to do when the key file exists (or the key is a systemd credential)."""
    pending = pending_key_path(key_file)
    if credential_path() is not None or key_file.exists() or not pending.exists():
        return
    try:
        os.link(pending, key_file)
    except FileExistsError:
        return
    _fsync_dir(key_file.parent)
    pending.unlink(missing_ok=True)


def load_signer(key_file: Path, name: str, *, create: bool = True) -> NoteSigner:
    """The signer under key ``name``: from the systemd credential, the key file, a key made
    before that has not signed yet (``create`` only), or a new key."""
    cred = credential_path()
    pending = pending_key_path(key_file)
    if cred is not None:
        key = parse_private_key(read_key_file(cred), str(cred))
    elif key_file.exists():
        key = _read_key(key_file)
    elif create and pending.exists():
        key = _read_key(pending)
    elif create:
        key = write_new_key(pending)
    elif pending.exists():
        raise ConfigError(
            str(key_file),
            [
                f"integrity.key_file: the key `rollwatch serve` made ({pending.name}) has not signed a"
                " checkpoint yet; start serve until it has"
            ],
        )
    else:
        raise ConfigError(
            str(key_file),
            ["integrity.key_file: no checkpoint key here (it is made by the first `rollwatch serve`)"],
        )
    return NoteSigner(name, key)


def existing_signer(key_file: Path, name: str) -> NoteSigner | None:
    """The signer if a key exists already (``rollwatch verify`` never creates one)."""
    if credential_path() is None and not key_file.exists():
        return None
    return load_signer(key_file, name, create=False)
