"""Optional TLS and basic auth for the exporter's endpoint, in the spirit of Prometheus'
exporter-toolkit web config: users with bcrypt-hashed passwords, a certificate and key."""

from __future__ import annotations

import base64
import binascii
import ssl
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer

import bcrypt

from pipeline.config import WebSettings

# A hash to check against when the user is unknown, so timing does not tell which users exist.
_DUMMY_HASH = bcrypt.hashpw(b"treewatch", bcrypt.gensalt(rounds=4))


def authorizer(web: WebSettings) -> Callable[[BaseHTTPRequestHandler], bool] | None:
    """A check that answers 401 itself and returns False when basic auth is configured and fails."""
    users = {name: hashed.encode() for name, hashed in web.basic_auth_users.items()}
    if not users:
        return None

    def authorize(handler: BaseHTTPRequestHandler) -> bool:
        if _credentials_valid(handler.headers.get("Authorization", ""), users):
            return True
        body = b"unauthorized\n"
        handler.send_response(401)
        handler.send_header("WWW-Authenticate", 'Basic realm="treewatch"')
        handler.send_header("Content-Type", "text/plain; charset=utf-8")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
        return False

    return authorize


def _credentials_valid(header: str, users: dict[str, bytes]) -> bool:
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
    matches = bcrypt.checkpw(password.encode(), hashed if hashed is not None else _DUMMY_HASH)
    return matches and hashed is not None


def wrap_tls(server: HTTPServer, web: WebSettings) -> None:
    """Serve HTTPS when a certificate and key are configured."""
    if not web.tls_cert_file:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(web.tls_cert_file, web.tls_key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
