"""TLS contexts for connections between organisations, and pinning the peer to a URA.

Why: TRANSFER.md ("Sent over mutual TLS ... The peer certificate's URA must equal ...") makes
the *organisation* (its URA in the UZI subjectAltName) the identity of a connection, not a host
name. Organisation certificates name `<ura>.jgz.test` while we connect to whatever address the
directory lists, so host-name checking is off (`check_hostname=False`) and replaced by a
stronger check: the peer's chain must pass `Trust.verify` (CRL, fail closed) and its leaf must
be the certificate the signed directory lists for the URA we meant to reach.

That check runs from httpcore's `trace` hook right after the TLS handshake, i.e. *before* the
request is written: a server that is not the intended organisation never receives the bytes.
(The ssl module has no verification callback; the trace hook is the earliest point at which
the peer certificate is available through httpx.)
"""

from __future__ import annotations

import _ssl
import os
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ekd.exchange.trust import CertificateRejected, Trust


class PeerMismatch(Exception):
    """The TLS peer is not the organisation we meant to reach (or its certificate is not
    trusted). Raised from the httpx trace hook, so the request was not sent."""


def _load_credentials(context: ssl.SSLContext, cert_path: Path, key_path: Path,
                      chain_path: Path | None) -> None:
    """`load_cert_chain` wants one file holding the leaf and the intermediates to send; the
    PKI keeps them apart (`<ura>.pem`, `chain.pem`). Only public certificates go into the
    short-lived temporary file; the key is read from its own (0600) file."""
    certs = [x509.load_pem_x509_certificate(Path(cert_path).read_bytes())]
    if chain_path is not None:
        certs += [c for c in x509.load_pem_x509_certificates(Path(chain_path).read_bytes())
                  if c.subject != c.issuer]  # a root is never sent: the peer must have it
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    fd, name = tempfile.mkstemp(prefix="ekd-chain-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        context.load_cert_chain(name, str(key_path))
    finally:
        os.unlink(name)


def _base(protocol: int, roots_path: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # TRANSFER.md: TLS >= 1.2, prefer 1.3
    context.load_verify_locations(cafile=str(roots_path))
    return context


def server_context(cert_path: Path, key_path: Path, chain_path: Path | None, roots_path: Path,
                   *, client_cert: ssl.VerifyMode = ssl.CERT_REQUIRED) -> ssl.SSLContext:
    """A server context presenting the organisation certificate (plus intermediates) and
    verifying client certificates against `roots_path`. `client_cert=CERT_OPTIONAL` lets
    clients without a certificate in (the relay's public directory endpoints); a certificate
    that *is* presented must still chain to the roots or the handshake fails."""
    context = _base(ssl.PROTOCOL_TLS_SERVER, roots_path)
    _load_credentials(context, cert_path, key_path, chain_path)
    context.verify_mode = client_cert
    return context


def client_context(cert_path: Path | None, key_path: Path | None, chain_path: Path | None,
                   roots_path: Path) -> ssl.SSLContext:
    """A client context verifying the server against `roots_path` without host-name checks
    (see the module docstring: pin the URA with `pin_peer` instead), presenting the
    organisation certificate when one is given."""
    context = _base(ssl.PROTOCOL_TLS_CLIENT, roots_path)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    if cert_path is not None and key_path is not None:
        _load_credentials(context, cert_path, key_path, chain_path)
    return context


def peer_chain(ssl_object: ssl.SSLObject) -> list[x509.Certificate]:
    """The peer's verified chain, leaf first (Python 3.13 has the public method; 3.11/3.12
    the same one on `_sslobj`); only the leaf when neither is there."""
    getter = getattr(ssl_object, "get_verified_chain", None) or getattr(
        getattr(ssl_object, "_sslobj", None), "get_verified_chain", None)
    if getter is not None:
        ders = [c.public_bytes(_ssl.ENCODING_DER) for c in getter()]
        if ders:
            return [x509.load_der_x509_certificate(d) for d in ders]
    der = ssl_object.getpeercert(binary_form=True)
    return [x509.load_der_x509_certificate(der)] if der else []


def check_peer(ssl_object: ssl.SSLObject, trust: Trust, expected: x509.Certificate) -> str:
    """Raise `PeerMismatch` unless the peer's chain is trusted and its leaf is `expected`
    (the directory's certificate of the organisation we meant to reach); return its URA."""
    chain = peer_chain(ssl_object)
    if not chain:
        raise PeerMismatch("The server presented no certificate")
    roots = {r.subject for r in trust.roots}
    presented = [c for c in chain[1:] if not (c.subject in roots and c.subject == c.issuer)]
    try:
        ura = trust.verify([chain[0], *presented], usage="tls")
    except CertificateRejected as exc:
        raise PeerMismatch(f"The server certificate is not trusted: {exc}") from None
    if chain[0] != expected:
        raise PeerMismatch(f"The server (URA {ura}) does not present the certificate the "
                           "directory lists for the organisation")
    return ura


def pin_peer(trust: Trust, expected: x509.Certificate) -> dict[str, Any]:
    """httpx request `extensions` that abort the request after the handshake, before the
    request is written, unless the peer passes `check_peer`.

    The hook fires when a connection is *opened*: use a client (connection pool) per expected
    peer, or a reused connection to another peer would go unchecked."""

    def trace(event: str, info: dict[str, Any]) -> None:
        if event == "connection.start_tls.complete":
            stream = info.get("return_value")
            ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
            if ssl_object is None:
                raise PeerMismatch("The connection is not TLS")
            check_peer(ssl_object, trust, expected)

    hook: Callable[[str, dict[str, Any]], None] = trace
    return {"trace": hook}
