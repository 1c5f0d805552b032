"""Network access rules shared by the servers: bind addresses and bearer tokens."""

from __future__ import annotations

import hmac
import socket

import pytest

from experts import access
from experts.access import AccessError, check_bind_host, is_authorized, is_loopback_host, token_matches


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.9", "::ffff:127.0.0.1"])
def test_loopback_hosts_are_allowed(host):
    check_bind_host(host, allow_remote=False)
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::", "192.0.2.10"])
def test_wildcard_and_outside_hosts_need_allow_remote(host):
    # "" used to pass as loopback although bind(("", port)) listens on every interface.
    with pytest.raises(AccessError, match=r"^--host .* listens beyond this machine .*--allow-remote") as exc:
        check_bind_host(host, allow_remote=False)
    assert "\n" not in str(exc.value)
    check_bind_host(host, allow_remote=True)


def test_a_name_is_resolved_not_trusted(monkeypatch):
    """A host name counts by the addresses it resolves to: one public address is enough to refuse."""
    real = socket.getaddrinfo

    def fake(host, *a, **kw):
        if host == "box.example":
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("203.0.113.7", 0)),
            ]
        return real(host, *a, **kw)

    monkeypatch.setattr(access.socket, "getaddrinfo", fake)
    with pytest.raises(AccessError, match="203.0.113.7 is not loopback"):
        check_bind_host("box.example", allow_remote=False)


def test_unresolvable_host_is_one_line():
    with pytest.raises(AccessError, match=r"^--host 'no-such-host\.invalid' does not resolve"):
        check_bind_host("no-such-host.invalid", allow_remote=True)


@pytest.mark.parametrize(
    "header, ok",
    [
        ("Bearer s3cret", True),
        ("bearer s3cret", True),  # schemes are case-insensitive (RFC 7235)
        ("BEARER   s3cret  ", True),
        ("Bearer s3cre", False),
        ("Bearer s3cret-and-more", False),
        ("Basic s3cret", False),
        ("s3cret", False),
        ("Bearer", False),
        ("", False),
        (None, False),
    ],
)
def test_token_matches(header, ok):
    assert token_matches(header, "s3cret") is ok


def test_token_compare_is_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    assert token_matches("Bearer abc", "abc") and calls == [(b"abc", b"abc")]


def test_non_ascii_token_matches_the_bytes_a_client_sends():
    sent = "Bearer clé".encode().decode("latin-1")  # what an ASGI server hands over
    assert token_matches(sent, "clé")


def test_no_token_configured_means_open_and_empty_token_never_matches():
    assert is_authorized(None, None) and is_authorized("Bearer x", "")
    assert not token_matches("Bearer ", "") and not is_authorized(None, "t")
    assert access.LIVENESS == {"status": "ok"}
