"""Optional TLS and basic auth for the exporter's endpoint, in the spirit of Prometheus'
exporter-toolkit web config: users with bcrypt-hashed passwords, a certificate and key."""

from __future__ import annotations

import base64
import binascii
import hashlib
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable

import bcrypt

from exporter.settings import WebSettings
from pipeline.config import ConfigError
from pipeline.tls import load_cert_chain

# The Authorization header of a request -> whether it may be answered.
Authorizer = Callable[[str], bool]
# What a refused request is told to send (its WWW-Authenticate header).
CHALLENGE = 'Basic realm="treewatch"'


def authorizer(web: WebSettings) -> Authorizer | None:
    """A check of a request's Authorization header when basic auth is configured, else None.

    The server answers a refused request 401 with ``CHALLENGE``."""
    users = {name: _checked_hash(name, hashed) for name, hashed in web.basic_auth_users.items()}
    if not users:
        return None
    # An unknown user is checked against a hash of the same cost, so the answer's timing does not
    # tell which user names exist.
    cost = max(int(hashed[4:6]) for hashed in users.values())
    dummy = bcrypt.hashpw(b"treewatch-unknown-user", bcrypt.gensalt(rounds=cost))

    # bcrypt is slow on purpose; Prometheus sends the same header every scrape, so a header once
    # verified is remembered (as a digest, never in clear) instead of hashed again each time.
    verified = _VerifiedHeaders()

    def authorize(header: str) -> bool:
        if verified.seen(header):
            return True
        if _credentials_valid(header, users, dummy):
            verified.remember(header)
            return True
        return False

    return authorize


class _VerifiedHeaders:
    """A small, thread-safe set of digests of Authorization headers that passed bcrypt."""

    def __init__(self, capacity: int = 64) -> None:
        self._digests: OrderedDict[bytes, None] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    @staticmethod
    def _digest(header: str) -> bytes:
        return hashlib.sha256(header.encode()).digest()

    def seen(self, header: str) -> bool:
        digest = self._digest(header)
        with self._lock:
            if digest in self._digests:
                self._digests.move_to_end(digest)
                return True
        return False

    def remember(self, header: str) -> None:
        with self._lock:
            self._digests[self._digest(header)] = None
            while len(self._digests) > self._capacity:
                self._digests.popitem(last=False)


def _checked_hash(user: str, hashed: str) -> bytes:
    """The hash as bytes, or a ConfigError naming the user (never the hash) when bcrypt rejects it."""
    encoded = hashed.encode()
    try:
        bcrypt.checkpw(b"", encoded)
        int(hashed[4:6])
    except ValueError:
        raise ConfigError(f"exporter.web.basic_auth_users.{user}: not a valid bcrypt hash") from None
    return encoded


def _credentials_valid(header: str, users: dict[str, bytes], dummy: bytes) -> bool:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return False
    try:
        user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    if not sep:
        return False
    hashed = users.get(user)
    try:
        matches = bcrypt.checkpw(password.encode(), hashed if hashed is not None else dummy)
    except ValueError:  # bcrypt refuses passwords over 72 bytes; no configured one is that long
        return False
    return matches and hashed is not None


def tls_context(web: WebSettings) -> ssl.SSLContext | None:
    """The server-side TLS context when a certificate and key are configured, else None.

    The listening socket is never wrapped: each connection's handshake runs in its own handler
    thread (see ExporterHTTPServer), so a client that stalls mid-handshake blocks nobody else.
    """
    if not web.tls_cert_file:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_cert_chain(context, "exporter.web", ("tls_cert_file", web.tls_cert_file),
                    ("tls_key_file", web.tls_key_file), ("tls_key_password_file", web.tls_key_password))
    return context
