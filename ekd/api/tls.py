"""HTTPS and mutual TLS for `ekd serve`: the client certificate reaches the application.

uvicorn terminates TLS but does not put the client certificate into the ASGI scope. The
protocol classes here add the ASGI TLS extension
(https://asgi.readthedocs.io/en/latest/specs/tls.html) to every request on a TLS connection::

    scope["extensions"]["tls"] = {
        "server_cert": None,
        "client_cert_chain": ["-----BEGIN CERTIFICATE-----...", ...],  # leaf first
        "client_cert_name": "CN=...,O=...",  # RFC 4514, or None
        "client_cert_error": None,
        "tls_version": 0x0304,
        "cipher_suite": 0x1302,
    }

The TLS facts are read once per connection (after the handshake, in `connection_made`) and
copied into each request's scope, so a keep-alive connection pays for them once.

With `EKD_TLS_CLIENT_CA` set, the server asks for a client certificate but does not require one
(`CERT_OPTIONAL`): bearer-token clients connect without a certificate, and a certificate that is
presented must chain to that CA, or the handshake fails before any request is read. So a
certificate in the scope is always one the CA vouches for. Revocation (CRL/OCSP) is not checked.

When ekd runs behind a TLS-terminating proxy, none of this applies: the proxy must then verify
client certificates itself, and ekd sees no certificate.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography import x509
from uvicorn.protocols.http.h11_impl import H11Protocol

from ekd.config import Settings

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is a dependency of ekd
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]

#: `SSLObject.version()` names -> the 16-bit protocol versions the ASGI TLS spec asks for.
_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


class TLSConfigError(ValueError):
    """The TLS settings cannot work; the message says which variable to fix."""


def _certificate_chain(ssl_object: ssl.SSLObject) -> list[str]:
    """The client's certificate chain as PEM strings, leaf first; empty without a certificate.

    Python 3.13 has `SSLObject.get_verified_chain()`; 3.10-3.12 have the same method on the
    private `_sslobj`. Without either, only the leaf is available (which is all ekd needs).
    """
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return []
    getter = getattr(ssl_object, "get_verified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_verified_chain", None)
    if getter is not None:
        try:
            chain = getter()
            pems = [cert.public_bytes() for cert in chain]  # default format: PEM
            pems = [p.decode("ascii") if isinstance(p, bytes) else p for p in pems]
            if pems:
                return pems
        except (AttributeError, ValueError, ssl.SSLError):
            pass
    return [ssl.DER_cert_to_PEM_cert(der)]


def _cipher_suite(ssl_object: ssl.SSLObject) -> int | None:
    """IANA id of the negotiated cipher suite: OpenSSL names it, `get_ciphers()` maps the name to
    its id (0x0300XXXX, of which the low 16 bits are the IANA number)."""
    cipher = ssl_object.cipher()
    if not cipher:
        return None
    context = ssl_object.context
    for entry in context.get_ciphers() if context is not None else ():
        if entry.get("name") == cipher[0] and isinstance(entry.get("id"), int):
            return int(entry["id"]) & 0xFFFF
    return None


def tls_extension(ssl_object: ssl.SSLObject) -> dict[str, Any]:
    """The ASGI TLS extension for a connection whose handshake is complete."""
    chain = _certificate_chain(ssl_object)
    name = None
    if chain:
        try:
            name = client_certificate_from_pem(chain[0]).subject.rfc4514_string()
        except ValueError:
            name = None
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": _cipher_suite(ssl_object),
    }


def _with_tls(app: ASGIApp, tls: dict[str, Any]) -> ASGIApp:
    """`app` with the connection's TLS extension added to each request scope (a fresh copy per
    request, so that one request cannot change what the next one sees)."""

    async def with_tls(scope: Scope, receive: Any, send: Any) -> None:
        extensions = dict(scope.get("extensions") or {})
        extensions["tls"] = {**tls, "client_cert_chain": list(tls["client_cert_chain"])}
        scope["extensions"] = extensions
        await app(scope, receive, send)

    return with_tls


class _TLSScopeMixin:
    """Wraps the protocol's per-connection `app` once the TLS handshake is done.

    uvicorn creates one protocol object per connection and calls `connection_made` after the
    handshake; both its httptools and h11 implementations then start each request with
    `self.app`. Replacing that attribute works for both without copying their parsing code.
    """

    app: Any

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.app = _with_tls(self.app, tls_extension(ssl_object))


class TLSH11Protocol(_TLSScopeMixin, H11Protocol):
    """uvicorn's h11 HTTP protocol, adding the ASGI TLS extension."""


if HttpToolsProtocol is not None:

    class TLSHttpToolsProtocol(_TLSScopeMixin, HttpToolsProtocol):
        """uvicorn's httptools HTTP protocol (ekd's default), adding the ASGI TLS extension."""

else:  # httptools not installed: same behaviour, slower parser
    TLSHttpToolsProtocol = TLSH11Protocol  # type: ignore[misc]

_CLASSES: dict[str, type[asyncio.Protocol]] = {
    "httptools": TLSHttpToolsProtocol,
    "h11": TLSH11Protocol,
}


def _readable(variable: str, path: str) -> Path:
    file = Path(path)
    if not file.is_file():
        raise TLSConfigError(f"{variable}: no such file: {path}")
    return file


def uvicorn_tls_options(settings: Settings, *, http: str = "httptools") -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config`: HTTPS with `EKD_TLS_CERT` and
    `EKD_TLS_KEY`, and with `EKD_TLS_CLIENT_CA` also optional client certificates.

    Empty when no TLS is configured (plain HTTP, e.g. behind a proxy). Raises `TLSConfigError`
    for a half configuration or files that do not load, so `ekd serve` fails at start with a
    clear message instead of uvicorn's trace (or, worse, silently without mutual TLS).
    `http` picks uvicorn's parser: "httptools" (ekd's default) or "h11".
    """
    cert, key, client_ca = settings.tls_cert, settings.tls_key, settings.tls_client_ca
    if not (cert or key or client_ca):
        return {}
    if not (cert and key):
        missing = "EKD_TLS_KEY" if cert else "EKD_TLS_CERT"
        raise TLSConfigError(
            f"HTTPS needs both EKD_TLS_CERT and EKD_TLS_KEY; {missing} is not set"
            + (" (EKD_TLS_CLIENT_CA alone does not enable TLS)" if client_ca else ""))
    if http not in _CLASSES:
        raise TLSConfigError(f"Unknown HTTP implementation {http!r} (httptools or h11)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(_readable("EKD_TLS_CERT", cert), _readable("EKD_TLS_KEY", key))
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"EKD_TLS_CERT/EKD_TLS_KEY do not load as a certificate and its key: {exc.reason}"
        ) from exc
    options: dict[str, Any] = {
        "ssl_certfile": cert,
        "ssl_keyfile": key,
        "http": _CLASSES[http],
    }
    if client_ca:
        try:
            context.load_verify_locations(cafile=_readable("EKD_TLS_CLIENT_CA", client_ca))
        except ssl.SSLError as exc:
            raise TLSConfigError(
                f"EKD_TLS_CLIENT_CA does not load as PEM CA certificates: {exc.reason}"
            ) from exc
        # Optional: clients with a bearer token need no certificate; one that is presented
        # must chain to the CA, or the handshake fails.
        options |= {"ssl_ca_certs": client_ca, "ssl_cert_reqs": ssl.CERT_OPTIONAL}
    return options


@lru_cache(maxsize=1024)
def client_certificate_from_pem(pem: str) -> x509.Certificate:
    """Parsed certificate, cached: a client sends the same certificate on every request."""
    return x509.load_pem_x509_certificate(pem.encode("ascii"))


def client_certificate(scope: Scope) -> x509.Certificate | None:
    """The verified client (leaf) certificate of the request, or None without one.

    Reads the ASGI TLS extension, which only the TLS layer sets; it is never taken from a
    request header.
    """
    tls = (scope.get("extensions") or {}).get("tls")
    if not isinstance(tls, dict):
        return None
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    return client_certificate_from_pem(chain[0])
