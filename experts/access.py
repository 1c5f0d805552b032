"""Who may reach a server: the bind-address and bearer-token rules shared by ``vision-router expert
serve`` and the proxy (``vision-router serve``).

- :func:`check_bind_host` resolves the host the way the socket will (``""``, ``0.0.0.0``, ``::`` and
  host names included) and refuses anything that is not loopback unless remote access was asked for.
- :func:`token_matches` compares an ``Authorization`` header with the expected token in constant time,
  with the ``Bearer`` scheme in any case (RFC 7235 schemes are case-insensitive).
- :func:`is_authorized` is the whole rule for one request: no token configured means open.
- :data:`LIVENESS` is all an unauthenticated health probe learns while a token is set.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket

from experts.errors import VisionRouterError

LIVENESS: dict[str, str] = {"status": "ok"}
"""The body of an unauthenticated liveness answer: it says the process is up, nothing more."""

UNAUTHORIZED = "unauthorized: send `Authorization: Bearer <token>`"


class AccessError(VisionRouterError):
    """A server would listen where it must not (one line, shown as it is)."""


def resolve_host(host: str) -> list[str]:
    """Every address a server told to listen on ``host`` would bind. ``""`` means every interface, as it
    does for :func:`socket.bind`. Raises :class:`AccessError` when the name does not resolve, or holds
    spaces: a resolver may forgive ``"127.0.0.1 "`` where the server's own bind later does not."""
    if any(c.isspace() for c in host):
        raise AccessError(f"--host {host!r}: an address has no spaces (write it without them)")
    name = host.strip("[]")
    try:
        if not name:
            # bind(("", port)) is INADDR_ANY: resolve it like a passive (listening) wildcard.
            infos = socket.getaddrinfo(None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        else:
            infos = socket.getaddrinfo(name, 0, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise AccessError(f"--host {host!r} does not resolve ({exc})") from None
    out: list[str] = []
    for *_, sockaddr in infos:
        addr = str(sockaddr[0]).split("%", 1)[0]  # drop an IPv6 zone id
        if addr not in out:
            out.append(addr)
    return out


def is_loopback_address(address: str) -> bool:
    """Whether one literal address is loopback (IPv4-mapped IPv6 included)."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool((mapped or ip).is_loopback)


def is_loopback_host(host: str) -> bool:
    """Whether every address ``host`` resolves to is loopback (``""`` and ``0.0.0.0`` are not)."""
    addresses = resolve_host(host)
    return bool(addresses) and all(is_loopback_address(a) for a in addresses)


def check_bind_host(host: str, allow_remote: bool) -> None:
    """Refuse, with one line, to listen beyond this machine unless ``allow_remote`` is set."""
    if allow_remote:
        resolve_host(host)  # a typo still fails here, not deep inside the server
        return
    addresses = resolve_host(host)
    outside = [a for a in addresses if not is_loopback_address(a)]
    if outside or not addresses:
        shown = host if host.strip() else '""'
        raise AccessError(
            f"--host {shown} listens beyond this machine ({', '.join(outside) or 'no address'} "
            f"{'are' if len(outside) > 1 else 'is'} not loopback): "
            "add --allow-remote (and a --token) to serve other machines"
        )


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` as a bearer token. Constant-time compare;
    the scheme is case-insensitive; an empty ``token`` never matches."""
    if not token or not authorization:
        return False
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(_raw(value.strip()), token.encode("utf-8"))


def is_authorized(authorization: str | None, token: str | None) -> bool:
    """The rule for one request: open when no token is configured, else the bearer token must match."""
    return not token or token_matches(authorization, token)


def _raw(header_value: str) -> bytes:
    # ASGI servers decode header bytes as latin-1: encoding back gives the bytes the client sent, so a
    # non-ASCII token typed as UTF-8 on both sides still matches.
    try:
        return header_value.encode("latin-1")
    except UnicodeEncodeError:
        return header_value.encode("utf-8")
