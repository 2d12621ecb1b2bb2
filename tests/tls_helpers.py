"""Certificates and a real `ekd serve` over HTTPS for end-to-end mutual TLS tests.

The certificate factory is `tests/test_mtls.py`'s (reused, not copied); everything is generated
at test time into a temporary folder and the server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from tests.perf._servers import REPO_ROOT, ServerProcess, ekd_command, free_port, running
from tests.test_mtls import Issued, issue, make_ca, uzi_name

__all__ = ["Issued", "Pki", "ServedEkd", "make_pki", "serve_ekd", "uzi_server_value"]


def uzi_server_value(ura: str, uzi_number: str = "12345678") -> str:
    """The subjectAltName otherName value of a UZI server certificate (card type S) of `ura`
    (format: `ekd.security.certificates`)."""
    return f"2.16.528.1.1003.1.3.5.5.5-1-{uzi_number}-S-{ura}-00.000-00000000"


@dataclass
class Pki:
    folder: Path
    ca: Issued
    server: tuple[Path, Path]
    #: Organisation (client) certificates by URA: (certificate file, key file).
    clients: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    def context(self, ura: str | None = None) -> ssl.SSLContext:
        """A client TLS context trusting the test CA, presenting `ura`'s certificate."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if ura is not None:
            cert, key = self.clients[ura]
            context.load_cert_chain(str(cert), str(key))
        return context


def make_pki(folder: Path, uras: list[str]) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and one UZI-style server certificate per URA."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = make_ca("ekd e2e test CA")
    (folder / "ca.pem").write_bytes(ca.pem)
    server = issue(ca, "127.0.0.1", server=True,
                   san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    pki = Pki(folder, ca, server.write(folder, "server"))
    for n, ura in enumerate(uras):
        cert = issue(ca, f"system-{ura}.jgz-test.nl",
                     san=[x509.DNSName(f"system-{ura}.jgz-test.nl"),
                          uzi_name(uzi_server_value(ura, uzi_number=f"1234567{n}"))])
        pki.clients[ura] = cert.write(folder, f"client-{ura}")
    return pki


@dataclass
class ServedEkd:
    base: str  # https://127.0.0.1:<port>/fhir
    process: ServerProcess

    def token(self) -> str:
        """The development token `ekd serve` printed (its `TOKEN=` line)."""
        return self.process.token()


@contextlib.contextmanager
def serve_ekd(pki: Pki, database_url: str, workdir: Path, *, dev_role: str = "system",
              timeout: float = 90.0) -> Iterator[ServedEkd]:
    """`ekd serve` with EKD_TLS_CERT/EKD_TLS_KEY/EKD_TLS_CLIENT_CA in development mode; stopped
    (its own process group only) when the block ends."""
    port = free_port()
    env = dict(os.environ)
    env.update({
        "EKD_DATABASE_URL": database_url,
        "EKD_KEY_DIR": str(workdir / "keys"),
        "EKD_JGZ_ENFORCE": "false",
        "EKD_MODE": "development",
        "EKD_TLS_CERT": str(pki.server[0]),
        "EKD_TLS_KEY": str(pki.server[1]),
        "EKD_TLS_CLIENT_CA": str(pki.ca_file),
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p),
    })
    env.pop("EKD_BASE_URL", None)
    argv = [*ekd_command(), "serve", "--host", "127.0.0.1", "--port", str(port),
            "--database-url", database_url, "--dev-role", dev_role, "--log-level", "warning"]
    server = ServerProcess("ekd-tls", argv, port, f"https://127.0.0.1:{port}/health/live",
                           workdir / "ekd-serve.log", env=env, cwd=workdir,
                           verify=pki.context())
    with running(server, timeout):
        yield ServedEkd(f"https://127.0.0.1:{port}/fhir", server)
