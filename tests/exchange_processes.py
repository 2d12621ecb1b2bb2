"""Real processes for transfer tests: the relay (`ekd exchange serve`) and `ekd serve`
instances, each organisation with its own database and certificate, mutual TLS everywhere,
all on 127.0.0.1. Used by the end-to-end and the crash tests."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from ekd.exchange import pki as pki_module
from ekd.exchange.channels import client_context
from ekd.exchange.directory import Directory, DirectoryEntry
from ekd.jgz import demo
from tests.db_helpers import scratch_database
from tests.perf._servers import REPO_ROOT, ServerProcess, ekd_command, free_port

THUISZORG, GGD, RELAY = "11110001", "22220002", "99990009"
FINAL = ("imported", "rejected", "dead-letter", "cancelled", "invalid")


@contextlib.contextmanager
def database_url(backend: str, workdir: Path, name: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir / f'{name}.db'}"
        return
    server = os.environ.get("EKD_TEST_DATABASE_URL")
    if not server:
        pytest.skip("PostgreSQL runs of the real processes need EKD_TEST_DATABASE_URL")
    with scratch_database(server, f"ekd_e2e_{name}") as url:
        yield url


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("EKD_BASE_URL", "EKD_FAILPOINT"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


@dataclass
class Network:
    folder: Path
    databases: dict[str, str]
    pki: pki_module.Pki = field(init=False)
    ports: dict[str, int] = field(init=False)
    servers: dict[str, ServerProcess] = field(default_factory=dict)
    #: `ekd serve --workers` per organisation (default 1).
    workers: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pki = pki_module.init(self.folder / "pki")
        self.ports = {ura: free_port() for ura in (THUISZORG, GGD, RELAY)}
        directory = Directory.init(self.folder / "directory")
        for ura, name in ((THUISZORG, "Thuiszorg Test"), (GGD, "GGD Test"),
                          (RELAY, "Relay")):
            issued = self.pki.issue(ura, name)
            # what a server presents over TLS: its certificate and the intermediate
            (self.folder / f"{ura}-full.pem").write_bytes(
                issued.cert_path.read_bytes()
                + (self.pki.folder / "intermediate.pem").read_bytes())
            directory.add(DirectoryEntry(
                ura=ura, name=name, endpoint=f"https://127.0.0.1:{self.ports[ura]}",
                certificate=issued.cert, role="relay" if ura == RELAY else "organisation"))
        self.tls = client_context(None, None, None, self.pki.folder / "root.pem")

    def base(self, ura: str) -> str:
        return f"https://127.0.0.1:{self.ports[ura]}"

    def server(self, ura: str, failpoint: str | None = None) -> ServerProcess:
        """The process for `ura` (relay or organisation), not started."""
        extra = {"EKD_FAILPOINT": failpoint} if failpoint else {}
        log = self.folder / f"{ura}.log"
        if ura == RELAY:
            argv = [*ekd_command(), "exchange", "serve", "--pki", str(self.pki.folder),
                    "--directory", str(self.folder / "directory"), "--ura", RELAY,
                    "--db", f"sqlite:///{self.folder / 'relay.db'}",
                    "--port", str(self.ports[RELAY]), "--retry-base", "0.2",
                    "--retry-cap", "1", "--poll", "0.1", "--lease", "4",
                    "--timeout", "3"]
            return ServerProcess("relay", argv, self.ports[RELAY],
                                 f"{self.base(RELAY)}/health", log, env=_env(extra),
                                 cwd=self.folder, verify=self.tls)
        folder, roots, db = self.pki.folder, self.pki.folder / "root.pem", self.databases[ura]
        env = _env({
            "EKD_DATABASE_URL": db, "EKD_KEY_DIR": str(self.folder / f"keys-{ura}"),
            "EKD_MODE": "development", "EKD_JGZ_ENFORCE": "true",
            "EKD_TLS_CERT": str(self.folder / f"{ura}-full.pem"),
            "EKD_TLS_KEY": str(folder / f"{ura}.key"), "EKD_TLS_CLIENT_CA": str(roots),
            "EKD_EXCHANGE_CERT": str(folder / f"{ura}.pem"),
            "EKD_EXCHANGE_KEY": str(folder / f"{ura}.key"),
            "EKD_EXCHANGE_CHAIN": str(self.pki.chain_path), "EKD_EXCHANGE_ROOT": str(roots),
            "EKD_EXCHANGE_CRL": str(self.pki.crl_path),
            "EKD_EXCHANGE_RELAY": self.base(RELAY), "EKD_EXCHANGE_RELAY_URA": RELAY,
            "EKD_EXCHANGE_DIRECTORY_KEY": str(self.folder / "directory" /
                                              "directory-public.pem"),
            "EKD_EXCHANGE_POLL": "0.1", "EKD_EXCHANGE_RETRY_BASE": "0.2",
            "EKD_EXCHANGE_RETRY_CAP": "1", "EKD_EXCHANGE_LEASE": "3", **extra})
        argv = [*ekd_command(), "serve", "--host", "127.0.0.1", "--port", str(self.ports[ura]),
                "--database-url", db, "--dev-role", "jeugdarts", "--log-level", "warning",
                "--workers", str(self.workers.get(ura, 1))]
        return ServerProcess(f"ekd-{ura}", argv, self.ports[ura],
                             f"{self.base(ura)}/health/live", log, env=env, cwd=self.folder,
                             verify=self.tls)

    def start(self, ura: str, failpoint: str | None = None) -> ServerProcess:
        self.stop(ura)
        server = self.servers[ura] = self.server(ura, failpoint)
        server.start(120)
        return server

    def stop(self, ura: str) -> None:
        server = self.servers.pop(ura, None)
        if server is not None:
            server.stop()

    def close(self) -> None:
        for ura in list(self.servers):
            self.stop(ura)

    def client(self, ura: str) -> httpx.Client:
        token = self.servers[ura].token()
        return httpx.Client(verify=self.tls, timeout=60,
                            headers={"Authorization": f"Bearer {token}"})

    def load_child(self, ura: str, seed: int = 11) -> str:
        with self.client(ura) as c:
            assert c.post(f"{self.base(ura)}/fhir", json=demo.shared_bundle()).status_code == 200
            bundle = next(demo.generate(1, seed=seed))
            bundle["entry"] = [e for e in bundle["entry"] if not (
                e["resource"]["resourceType"] == "Consent"
                and e["resource"].get("provision", {}).get("type") == "deny")]
            loaded = c.post(f"{self.base(ura)}/fhir", json=bundle)
            assert loaded.status_code == 200, loaded.text
            return next(e["response"]["location"].split("/")[1]
                        for e in loaded.json()["entry"]
                        if e["response"].get("location", "").startswith("Patient/"))

    def transfer(self, ura: str, patient_id: str, recipient: str) -> str:
        with self.client(ura) as c:
            started = c.post(f"{self.base(ura)}/fhir/Patient/{patient_id}/$transfer", json={
                "resourceType": "Parameters", "parameter": [
                    {"name": "recipient", "valueString": recipient},
                    {"name": "reason", "valueCode": "age4"}]})
            assert started.status_code == 202, started.text
            return next(p["valueString"] for p in started.json()["parameter"]
                        if p["name"] == "transfer")

    def state(self, ura: str, transfer_id: str) -> str:
        with self.client(ura) as c:
            return str(c.get(f"{self.base(ura)}/exchange/transfers/{transfer_id}")
                       .json()["state"])

    def wait_final(self, ura: str, transfer_id: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.state(ura, transfer_id)
            if state in FINAL:
                return state
            time.sleep(0.3)
        return state

    def received(self, ura: str) -> list[dict]:
        with self.client(ura) as c:
            return list(c.get(f"{self.base(ura)}/exchange/received").json()["received"])

    def wait_dead(self, ura: str, timeout: float = 60) -> int:
        """Wait until the process killed itself (a failpoint); its exit code."""
        server = self.servers[ura]
        assert server.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = server.proc.poll()
            if code is not None:
                return code
            time.sleep(0.1)
        raise AssertionError(f"{ura} did not reach its failpoint:\n{server.log_tail()}")


@contextlib.contextmanager
def network(folder: Path, backend: str) -> Iterator[Network]:
    with database_url(backend, folder, "a") as db_a, database_url(backend, folder, "b") as db_b:
        net = Network(folder, {THUISZORG: db_a, GGD: db_b})
        try:
            yield net
        finally:
            net.close()
