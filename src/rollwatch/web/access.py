"""Who counts as the operator on an HTTP request (SPEC §7: "loopback, or a key with
scope ``ops``").

A request is the operator's when its peer address is in ``server.trusted_peers``
(loopback by default) or when it carries ``Authorization: Bearer KEY`` for a key with
the ``ops`` scope that is neither expired nor revoked. The peer is the address uvicorn
reports: the socket's, or a local proxy's ``X-Forwarded-For`` when that proxy
connects from 127.0.0.1 (uvicorn's default). Behind a proxy on this host that does
not set it, every request would come from loopback: set ``trusted_peers = []`` there.

A trusted peer is the operator only when its ``Host`` header names this server as the
operator reaches it (an IP address, ``localhost``, or a name of :attr:`Operators.hosts`).
DNS rebinding otherwise made the operator's browser the attacker's: a page at a name the
attacker then resolves to 127.0.0.1 fetches the daemon as that name, from loopback, and may
read the answers (to the browser, they are the page's own origin): the console, with its
form token, the pass counts and every event under embargo. The name it sends is the
attacker's, and no rebinding makes a browser send one of ours.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Protocol

from starlette.requests import Request

from rollwatch.errors import BadRequest

OPS_SCOPE = "ops"

_LOOPBACK = ("127.0.0.0/8", "::1/128")


class _Holder(Protocol):
    @property
    def scopes(self) -> tuple[str, ...]: ...


class _Result(Protocol):
    @property
    def subscriber(self) -> _Holder | None: ...


class KeyCheck(Protocol):
    """What checks bearer keys (:class:`rollwatch.publication.keys.SubscriberDirectory`)."""

    async def authenticate(self, key: str | None) -> _Result:
        """The key's holder, or None with the reason."""
        ...

    async def refresh(self, *, force: bool = False) -> None:
        """Apply the subscriber events appended since the last look (``force``: now)."""
        ...


# A subscriber key (``rw_`` and 43 URL-safe characters), or a long enough piece of one, that
# a client put where it does not belong: the URL's path, which the access log records and
# error messages quote (a rollout id that is not one). Rollout ids are UUIDs and run ids
# ``run-…``: nothing of ours is shaped so.
_KEY_SHAPE = re.compile(r"rw_[A-Za-z0-9_-]{8,}")


def redact_keys(text: str) -> str:
    """``text`` with anything shaped like a subscriber key masked (for log lines and messages)."""
    return _KEY_SHAPE.sub("rw_[redacted]", text) if "rw_" in text else text


def bearer_key(request: Request) -> str | None:
    """The key of an ``Authorization: Bearer KEY`` header, if any; :class:`BadRequest` when
    the request has more than one ``Authorization`` header.

    Two of them (one the client's, one a proxy's, say) would otherwise be read as the first,
    while a proxy or a log in front may go by the other: which credentials the request
    carries must not depend on who reads it.
    """
    values = request.headers.getlist("authorization")
    if len(values) > 1:
        raise BadRequest(
            f"the request has {len(values)} Authorization headers; send one: 'Authorization: Bearer KEY'"
        )
    scheme, _, key = (values[0] if values else "").partition(" ")
    return (key.strip() or None) if scheme.lower() == "bearer" else None


class Operators:
    """Decides whether a request is the operator's: a trusted peer, or an ``ops`` key."""

    def __init__(
        self,
        trusted_peers: Iterable[str] = _LOOPBACK,
        keys: KeyCheck | None = None,
        hosts: Iterable[str] = (),
    ) -> None:
        """``trusted_peers``: IP networks (CIDR); ``keys``: checks ``ops`` keys (none: peers only);
        ``hosts``: the names, besides IP addresses and ``localhost``, a trusted peer's ``Host``
        header may give (the daemon's: the hosts of ``server.listen`` and ``server.base_url``,
        this machine's name)."""
        self.networks = [ipaddress.ip_network(n, strict=False) for n in trusted_peers]
        self.keys = keys
        self.hosts = {"localhost", *(_host_name(h) for h in hosts if h)}

    def trusted_peer(self, request: Request) -> bool:
        """Whether the request's peer address is in a trusted network, asking for this server by
        one of its own names (not a name rebound to it: see the module's docstring)."""
        if request.client is None or not self.own_host(request.headers.get("host")):
            return False
        try:
            addr = ipaddress.ip_address(request.client.host)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr.version == n.version and addr in n for n in self.networks)

    def own_host(self, header: str | None) -> bool:
        """Whether a ``Host`` header (``name[:port]``, ``[v6]:port``) names this server: an IP
        address or one of :attr:`hosts`. None (HTTP/1.0 without it, which no browser sends) does."""
        if header is None:
            return True
        host = header.strip()
        if host.startswith("["):
            host = host[1 : host.find("]")] if "]" in host else host
        elif host.count(":") == 1:
            host = host.partition(":")[0]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return _host_name(host) in self.hosts
        return True

    async def allows(self, request: Request) -> bool:
        """Whether ``request`` is the operator's."""
        if self.trusted_peer(request):
            return True
        key = bearer_key(request)
        if key is None or self.keys is None:
            return False
        result = await self.keys.authenticate(key)
        return result.subscriber is not None and OPS_SCOPE in result.subscriber.scopes

    async def still_allows(self, request: Request) -> bool:
        """``allows``, after reading every subscriber event up to now: for an answer that
        waited (a long poll), so that a key revoked meanwhile gets nothing."""
        if self.keys is not None and not self.trusted_peer(request):
            await self.keys.refresh(force=True)
        return await self.allows(request)


def _host_name(name: str) -> str:
    """A host name as DNS compares it: lower case, without the root's trailing dot."""
    return name.lower().rstrip(".")
