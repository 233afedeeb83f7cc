"""TLS and basic auth for the exporter's endpoint, as Prometheus' exporter-toolkit does them: users
with bcrypt-hashed passwords, a certificate and key. Configured by the file's ``exporter.web``
(here) or by an exporter-toolkit web config file (exporter.web_config); both end as an
``EndpointSecurity`` the server applies."""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import bcrypt

from exporter.settings import WebSettings
from pipeline.config import ConfigError
from pipeline.tls import load_cert_chain

# The Authorization header of a request -> whether it may be answered.
Authorizer = Callable[[str], bool]
# (password, bcrypt hash) -> whether they match: bcrypt.checkpw, or a wrapper of it.
PasswordCheck = Callable[[bytes, bytes], bool]
# What a refused request is told to send (its WWW-Authenticate header).
CHALLENGE = 'Basic realm="treewatch"'

# Logins remembered, each as a keyed digest (never the password): every scraper's own, and a
# guesser's repeated attempts. Refusals have their own store, so a flood of guesses never pushes a
# scraper's login out.
_ACCEPTED_LOGINS = 64
_REFUSED_LOGINS = 1024


@dataclass(frozen=True)
class EndpointSecurity:
    """What guards the endpoint: the basic-auth check, the TLS context and headers added to every answer."""

    authorize: Authorizer | None = None
    tls_context: ssl.SSLContext | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def endpoint_security(web: WebSettings) -> EndpointSecurity:
    """The security the file's ``exporter.web`` configures, loaded now (a bad hash or file is refused here)."""
    return EndpointSecurity(authorizer(web), tls_context(web))


def authorizer(web: WebSettings) -> Authorizer | None:
    """A check of a request's Authorization header when ``exporter.web`` has users, else None."""
    return basic_auth(web.basic_auth_users, "exporter.web.basic_auth_users")


def basic_auth(users: Mapping[str, str], where: str, check: PasswordCheck = bcrypt.checkpw) -> Authorizer | None:
    """A check of a request's Authorization header against ``users`` (name -> bcrypt hash; ``where``
    names them in errors), or None when there are none. The server answers a refused request 401
    with ``CHALLENGE``."""
    hashes = {name: _checked_hash(f"{where}.{name}", hashed) for name, hashed in users.items()}
    return BasicAuth(hashes, check) if hashes else None


class BasicAuth:
    """Basic auth that a password-guessing flood cannot turn into a CPU flood, as exporter-toolkit
    does it: bcrypt (slow on purpose) runs for one request at a time, and each answer is remembered,
    so a login or a guess that was already checked costs a dictionary look-up.

    Prometheus sends the same header every scrape; after its first scrape it never waits for bcrypt
    again, not even behind a flood of new guesses queued for the lock."""

    def __init__(self, users: Mapping[str, bytes], check: PasswordCheck = bcrypt.checkpw) -> None:
        self._users = dict(users)
        self._check = check
        # An unknown user is checked against a hash of the same cost, so the answer's timing does
        # not tell which user names exist.
        cost = max(int(hashed[4:6]) for hashed in self._users.values())
        self._unknown_user_hash = bcrypt.hashpw(b"treewatch-unknown-user", bcrypt.gensalt(rounds=cost))
        self._bcrypt = threading.Lock()
        self._accepted = _RecentDigests(_ACCEPTED_LOGINS)
        self._refused = _RecentDigests(_REFUSED_LOGINS)
        # A digest keyed by a secret of this process: the remembered logins tell nothing outside it.
        self._key = secrets.token_bytes(32)

    def __call__(self, header: str) -> bool:
        credentials = _credentials(header)
        if credentials is None:
            return False
        digest = hashlib.blake2b(credentials, key=self._key).digest()
        known = self._known(digest)
        if known is not None:
            return known
        with self._bcrypt:
            # The request this one waited for may have been the same login: its answer is here now.
            known = self._known(digest)
            if known is None:
                known = self._verify(credentials)
                (self._accepted if known else self._refused).add(digest)
        return known

    def _known(self, digest: bytes) -> bool | None:
        if digest in self._accepted:
            return True
        if digest in self._refused:
            return False
        return None

    def _verify(self, credentials: bytes) -> bool:
        user, _, password = credentials.partition(b":")
        hashed = self._users.get(user.decode())
        try:
            matches = self._check(password, hashed if hashed is not None else self._unknown_user_hash)
        except ValueError:  # bcrypt refuses passwords over 72 bytes; no configured one is that long
            return False
        return matches and hashed is not None


class _RecentDigests:
    """A small, thread-safe set of digests that forgets the least recently seen beyond ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self._digests: OrderedDict[bytes, None] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def __contains__(self, digest: bytes) -> bool:
        with self._lock:
            if digest in self._digests:
                self._digests.move_to_end(digest)
                return True
        return False

    def add(self, digest: bytes) -> None:
        with self._lock:
            self._digests[digest] = None
            while len(self._digests) > self._capacity:
                self._digests.popitem(last=False)


def _checked_hash(where: str, hashed: str) -> bytes:
    """The hash as bytes, or a ConfigError naming the user (never the hash) when bcrypt rejects it."""
    encoded = hashed.encode()
    try:
        bcrypt.checkpw(b"", encoded)
        int(hashed[4:6])
    except ValueError:
        raise ConfigError(f"{where}: not a valid bcrypt hash") from None
    return encoded


def _credentials(header: str) -> bytes | None:
    """``user:password`` (UTF-8) of a Basic Authorization header, or None when it is not one. A user
    name cannot hold a colon, so these bytes name one login and no other."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        credentials = base64.b64decode(encoded.strip(), validate=True)
        credentials.decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return credentials if b":" in credentials else None


def server_context(minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2) -> ssl.SSLContext:
    """A server-side TLS context, before its certificate is loaded.

    The listening socket is never wrapped: each connection's handshake runs in its own handler
    thread (see ExporterHTTPServer), so a client that stalls mid-handshake blocks nobody else.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = minimum
    return context


def tls_context(web: WebSettings) -> ssl.SSLContext | None:
    """The server-side TLS context when ``exporter.web`` has a certificate and key, else None."""
    if not web.tls_cert_file:
        return None
    context = server_context()
    load_cert_chain(context, "exporter.web", ("tls_cert_file", web.tls_cert_file),
                    ("tls_key_file", web.tls_key_file), ("tls_key_password_file", web.tls_key_password))
    return context
