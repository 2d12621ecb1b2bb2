"""End to end with real processes on 127.0.0.1: the relay (`ekd exchange serve`) and two
`ekd serve` instances (a thuiszorg and a GGD, each with its own database and organisation
certificate, mutual TLS everywhere) transfer a demo dossier. The received dossier equals the
sent one resource for resource, apart from server-assigned ids and the receiver's Provenance.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ekd.exchange import pki as pki_module
from ekd.exchange.channels import client_context
from ekd.exchange.directory import Directory, DirectoryEntry
from ekd.jgz import demo
from tests.db_helpers import scratch_database
from tests.perf._servers import REPO_ROOT, ServerProcess, ekd_command, free_port, running
from tests.test_transfer_flow import _shape

THUISZORG, GGD, RELAY = "11110001", "22220002", "99990009"


@contextlib.contextmanager
def database_url(backend: str, workdir: Path, name: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir / f'{name}.db'}"
        return
    server = os.environ.get("EKD_TEST_DATABASE_URL")
    if not server:
        pytest.skip("PostgreSQL end-to-end run needs EKD_TEST_DATABASE_URL")
    with scratch_database(server, f"ekd_e2e_{name}") as url:
        yield url


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("EKD_BASE_URL", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_dossier_travels_between_two_servers(backend: str, tmp_path: Path) -> None:
    pki = pki_module.init(tmp_path / "pki")
    ports = {ura: free_port() for ura in (THUISZORG, GGD, RELAY)}
    directory = Directory.init(tmp_path / "directory")
    for ura, name in ((THUISZORG, "Thuiszorg Test"), (GGD, "GGD Test"), (RELAY, "Relay")):
        issued = pki.issue(ura, name)
        # what the server presents over TLS: its certificate and the intermediate
        (tmp_path / f"{ura}-full.pem").write_bytes(
            issued.cert_path.read_bytes() + (pki.folder / "intermediate.pem").read_bytes())
        directory.add(DirectoryEntry(ura=ura, name=name,
                                     endpoint=f"https://127.0.0.1:{ports[ura]}",
                                     certificate=issued.cert,
                                     role="relay" if ura == RELAY else "organisation"))
    relay_argv = [*ekd_command(), "exchange", "serve", "--pki", str(pki.folder),
                  "--directory", str(tmp_path / "directory"), "--ura", RELAY,
                  "--db", f"sqlite:///{tmp_path / 'relay.db'}", "--port", str(ports[RELAY]),
                  "--retry-base", "0.2", "--retry-cap", "1", "--poll", "0.1"]
    roots = pki.folder / "root.pem"
    health_ctx = client_context(None, None, None, roots)
    relay = ServerProcess("relay", relay_argv, ports[RELAY],
                          f"https://127.0.0.1:{ports[RELAY]}/health", tmp_path / "relay.log",
                          env=_env({}), cwd=tmp_path, verify=health_ctx)

    def ekd(ura: str, db: str) -> ServerProcess:
        folder = pki.folder
        env = _env({
            "EKD_DATABASE_URL": db, "EKD_KEY_DIR": str(tmp_path / f"keys-{ura}"),
            "EKD_MODE": "development", "EKD_JGZ_ENFORCE": "true",
            "EKD_TLS_CERT": str(tmp_path / f"{ura}-full.pem"),
            "EKD_TLS_KEY": str(folder / f"{ura}.key"), "EKD_TLS_CLIENT_CA": str(roots),
            "EKD_EXCHANGE_CERT": str(folder / f"{ura}.pem"),
            "EKD_EXCHANGE_KEY": str(folder / f"{ura}.key"),
            "EKD_EXCHANGE_CHAIN": str(pki.chain_path), "EKD_EXCHANGE_ROOT": str(roots),
            "EKD_EXCHANGE_CRL": str(pki.crl_path),
            "EKD_EXCHANGE_RELAY": f"https://127.0.0.1:{ports[RELAY]}",
            "EKD_EXCHANGE_RELAY_URA": RELAY,
            "EKD_EXCHANGE_DIRECTORY_KEY": str(tmp_path / "directory" / "directory-public.pem"),
            "EKD_EXCHANGE_POLL": "0.1", "EKD_EXCHANGE_RETRY_BASE": "0.2"})
        argv = [*ekd_command(), "serve", "--host", "127.0.0.1", "--port", str(ports[ura]),
                "--database-url", db, "--dev-role", "jeugdarts", "--log-level", "warning"]
        return ServerProcess(f"ekd-{ura}", argv, ports[ura],
                             f"https://127.0.0.1:{ports[ura]}/health/live",
                             tmp_path / f"ekd-{ura}.log", env=env, cwd=tmp_path,
                             verify=health_ctx)

    with database_url(backend, tmp_path, "a") as db_a, database_url(backend, tmp_path, "b") \
            as db_b, running(relay, 60), running(ekd(THUISZORG, db_a), 120) as a, \
            running(ekd(GGD, db_b), 120) as b:
        base_a = f"https://127.0.0.1:{ports[THUISZORG]}"
        base_b = f"https://127.0.0.1:{ports[GGD]}"
        ca = httpx.Client(verify=health_ctx, timeout=60,
                          headers={"Authorization": f"Bearer {a.token()}"})
        cb = httpx.Client(verify=health_ctx, timeout=60,
                          headers={"Authorization": f"Bearer {b.token()}"})
        assert ca.post(f"{base_a}/fhir", json=demo.shared_bundle()).status_code == 200
        loaded = ca.post(f"{base_a}/fhir", json=next(demo.generate(1, seed=11)))
        assert loaded.status_code == 200, loaded.text
        child = next(e["response"]["location"].split("/")[1]
                     for e in loaded.json()["entry"]
                     if e["response"].get("location", "").startswith("Patient/"))
        sent = ca.get(f"{base_a}/fhir/Patient/{child}/$everything").json()["entry"]
        started = ca.post(f"{base_a}/fhir/Patient/{child}/$transfer", json={
            "resourceType": "Parameters", "parameter": [
                {"name": "recipient", "valueString": GGD},
                {"name": "reason", "valueCode": "age4"}]})
        assert started.status_code == 202, started.text
        transfer_id = next(p["valueString"] for p in started.json()["parameter"]
                           if p["name"] == "transfer")
        deadline = time.monotonic() + 60
        state = None
        while time.monotonic() < deadline:
            state = ca.get(f"{base_a}/exchange/transfers/{transfer_id}").json()["state"]
            if state in ("imported", "rejected", "dead-letter"):
                break
            time.sleep(0.2)
        assert state == "imported", (state, (tmp_path / "relay.log").read_text()[-2000:])
        received = cb.get(f"{base_b}/exchange/received").json()["received"]
        assert [r["state"] for r in received] == ["imported"]
        local = received[0]["patient_id"]
        got = cb.get(f"{base_b}/fhir/Patient/{local}/$everything").json()["entry"]
        assert _shape([e["resource"] for e in got], drop_provenance=True) == \
            _shape([e["resource"] for e in sent], drop_provenance=False)
