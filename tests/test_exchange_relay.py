"""The relay of the simulated exchange, as a real `ekd exchange serve` process.

Why a real process and real TLS: what is under test is exactly what a unit test would fake —
the mutual TLS handshake against the PKI root, the CRL check, the durability of a `202 stored`
(SIGKILL, restart) and the push to a recipient that must prove its URA. The recipients are tiny
uvicorn TLS servers in this process (`FakeInbox`) that record each delivery and answer what a
test scripts. Everything listens on 127.0.0.1; keys are generated into tmp folders.

Each test runs on SQLite and on PostgreSQL (EKD_TEST_DATABASE_URL, or testcontainers; skipped
with the reason shown when neither is available). Backoff is shortened to milliseconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ekd.api.tls import TLSH11Protocol
from ekd.exchange.channels import client_context, server_context
from ekd.exchange.directory import Directory, DirectoryEntry, DirectoryView, fetch_directory
from ekd.exchange.pki import Pki, init
from ekd.exchange.relay_store import NewMessage, RelayStore, receipt_id
from ekd.fhir import naming_systems
from ekd.security.certificates import ura_from_pem
from tests.db_helpers import scratch_database
from tests.perf._servers import REPO_ROOT, ServerProcess, free_port

RELAY, A, B, C, D, E, F, G = ("90000200", "90000201", "90000202", "90000203", "90000204",
                              "90000205", "90000206", "90000207")
MAX_BODY = 256 * 1024
FAST = ["--retry-base", "0.05", "--retry-cap", "0.2", "--poll", "0.05", "--timeout", "2",
        "--lease", "3"]


# --- a recipient's inbox --------------------------------------------------------------------


@dataclass
class FakeInbox:
    """An organisation's `/exchange/inbox`: mutual TLS (CERT_REQUIRED) with its PKI
    certificate; records every request; answers from `script[message id]` (a list of
    (status, json) used up in order), else 202 `{"status": "stored"}`."""

    pki: Pki
    ura: str
    port: int
    requests: list[dict[str, Any]] = field(default_factory=list)
    script: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    async def inbox(self, request: Request) -> JSONResponse:
        tls = request.scope["extensions"]["tls"]
        self.requests.append({
            "headers": dict(request.headers), "body": (await request.body()).decode(),
            "peer": ura_from_pem(tls["client_cert_chain"][0]),
            "connection": request.client.port if request.client else None})
        message_id = request.headers.get("ekd-message-id", "")
        steps = self.script.get(message_id)
        status, answer = steps.pop(0) if steps else (202, {"status": "stored"})
        return JSONResponse(answer, status_code=status)

    def received(self, message_id: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["headers"].get("ekd-message-id") == message_id]

    def start(self) -> None:
        folder = self.pki.folder
        config = uvicorn.Config(
            Starlette(routes=[Route("/exchange/inbox", self.inbox, methods=["POST"])]),
            host="127.0.0.1", port=self.port, http=TLSH11Protocol, lifespan="off",
            ssl_certfile=str(folder / f"{self.ura}.pem"),
            ssl_keyfile=str(folder / f"{self.ura}.key"), log_level="warning")
        config.load()
        config.ssl = server_context(folder / f"{self.ura}.pem", folder / f"{self.ura}.key",
                                    folder / "chain.pem", folder / "root.pem")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_for(lambda: self._server is not None and self._server.started, 10,
                 f"inbox {self.ura} did not start")

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
        self._server = self._thread = None


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} (after {timeout:.0f} s)")


# --- the world: PKI, directory, inboxes ------------------------------------------------------


@dataclass
class World:
    pki: Pki
    directory: Directory
    inboxes: dict[str, FakeInbox]
    down_port: int  # E's endpoint: nobody listens there until a test starts it

    def context(self, ura: str | None) -> ssl.SSLContext:
        folder = self.pki.folder
        if ura is None:
            return client_context(None, None, None, folder / "root.pem")
        return client_context(folder / f"{ura}.pem", folder / f"{ura}.key",
                              folder / "chain.pem", folder / "root.pem")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("exchange")
    pki = init(base / "pki")
    names = {RELAY: "Landelijke relay", A: "GGD Amsterdam", B: "GGD Utrecht",
             C: "Niet in de gids", D: "Ingetrokken", E: "GGD Tijdelijk Offline",
             F: "GGD Nieuw Certificaat", G: "GGD Omgeleid"}
    for ura, name in names.items():
        pki.issue(ura, name)
    directory = Directory.init(base / "directory")
    ports = {A: free_port(), B: free_port(), E: free_port()}

    def add(ura: str, port: int, role: str = "organisation") -> None:
        directory.add(DirectoryEntry(ura, names[ura], f"https://127.0.0.1:{port}",
                                     _cert(pki, ura), role=role))  # type: ignore[arg-type]

    add(RELAY, 1, role="relay")  # the relay's port is per process; its entry is about identity
    add(A, ports[A])
    add(B, ports[B])
    add(D, free_port())
    add(E, ports[E])
    add(F, free_port())
    add(G, ports[B])  # G's endpoint is (wrongly, or maliciously) B's server
    pki.revoke(D)
    pki.issue(F, names[F], replace=True)  # F now presents a certificate the directory lacks
    inboxes = {ura: FakeInbox(pki, ura, ports[ura]) for ura in (A, B)}
    for inbox in inboxes.values():
        inbox.start()
    try:
        yield World(pki, directory, inboxes, ports[E])
    finally:
        for inbox in inboxes.values():
            inbox.stop()


def _cert(pki: Pki, ura: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((pki.folder / f"{ura}.pem").read_bytes())


# --- the relay process ----------------------------------------------------------------------


@dataclass
class RunningRelay:
    url: str
    world: World
    process: ServerProcess

    def client(self, ura: str | None) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.world.context(ura), timeout=10,
                            trust_env=False)

    def send(self, ura: str, message: dict[str, Any]) -> httpx.Response:
        with self.client(ura) as client:
            return client.post("/messages", json=message)

    def status(self, ura: str, message_id: str) -> dict[str, Any]:
        with self.client(ura) as client:
            response = client.get(f"/messages/{message_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_status(self, ura: str, message_id: str, status: str,
                    timeout: float = 10) -> dict[str, Any]:
        return wait_for(lambda: (s := self.status(ura, message_id))["status"] == status and s,
                        timeout, f"message {message_id} never became {status}: "
                                 f"{self.status(ura, message_id)}")

    def kill(self) -> None:
        """SIGKILL (no shutdown at all), then tidy up the ServerProcess."""
        proc = self.process.proc
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        self.process.stop()


def start_relay(world: World, db_url: str, workdir: Path, *extra: str) -> RunningRelay:
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "ekd", "exchange", "serve", "--pki", str(world.pki.folder),
            "--directory", str(world.directory.folder), "--ura", RELAY, "--db", db_url,
            "--host", "127.0.0.1", "--port", str(port), "--max-body", str(MAX_BODY),
            "--log-level", "info", *extra]
    process = ServerProcess("relay", argv, port, f"https://127.0.0.1:{port}/health",
                            workdir / f"relay-{port}.log", env=env, cwd=workdir,
                            verify=world.context(None))
    process.start(30)
    return RunningRelay(f"https://127.0.0.1:{port}", world, process)


@contextlib.contextmanager
def relay_database(request: pytest.FixtureRequest, backend: str, workdir: Path,
                   name: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir / f'{name}.db'}"
        return
    server = request.getfixturevalue("postgres_server_url")
    with scratch_database(server, f"ekd_{name}") as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def relay(request: pytest.FixtureRequest, backend: str, world: World,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRelay]:
    workdir = tmp_path_factory.mktemp(f"relay-{backend}")
    with relay_database(request, backend, workdir, "relay") as url:
        running = start_relay(world, url, workdir, *FAST, "--max-attempts", "4")
        try:
            yield running
        finally:
            running.process.stop()


def message(recipient: str = B, *, kind: str = "package", body: str | None = None,
            message_id: str | None = None) -> dict[str, Any]:
    return {"id": message_id or str(uuid.uuid4()), "recipient": recipient, "kind": kind,
            "transfer": str(uuid.uuid4()),
            "body": body or ".".join(uuid.uuid4().hex for _ in range(5))}


# --- mutual TLS and the directory -----------------------------------------------------------


def test_directory_and_health_need_tls_but_no_client_certificate(relay: RunningRelay) -> None:
    with relay.client(None) as client:
        assert client.get("/health").status_code == 200
        entries = client.get("/directory/entries").json()
        orgs = client.get("/directory/Organization",
                          params={"identifier": f"{naming_systems.URA}|{A}"}).json()
        endpoints = client.get("/directory/Endpoint").json()
    assert len(entries) == 7
    assert (orgs["type"], orgs["total"]) == ("searchset", 1)
    organization, endpoint = (e["resource"] for e in orgs["entry"])
    assert organization["identifier"] == [{"system": naming_systems.URA, "value": A}]
    assert endpoint["address"] == f"https://127.0.0.1:{relay.world.inboxes[A].port}" \
                                  "/exchange/inbox"
    assert [e["search"]["mode"] for e in orgs["entry"]] == ["match", "include"]
    assert endpoints["total"] == 7
    assert {e["resource"]["resourceType"] for e in endpoints["entry"]} == {"Endpoint"}
    # the client side: fetched over the network, trusted only through the directory key
    view = fetch_directory(relay.url, relay.world.directory.public_key_path,
                           relay.world.context(None))
    assert isinstance(view, DirectoryView) and view.entry(B).name == "GGD Utrecht"
    with relay.client(None) as client:
        assert client.get("/directory/Organization",
                          params={"identifier": "90009999"}).json()["total"] == 0
    # plain HTTP is not spoken at all
    with pytest.raises(httpx.HTTPError):
        httpx.get(relay.url.replace("https", "http") + "/health", timeout=5)


def test_messages_require_a_client_certificate(relay: RunningRelay) -> None:
    with relay.client(None) as client:
        post = client.post("/messages", json=message())
        get = client.get(f"/messages/{uuid.uuid4()}")
    for response in (post, get):
        assert response.status_code == 401
        assert response.json()["error"] == "client_certificate_required"


def test_certificate_from_another_pki_fails_the_handshake(relay: RunningRelay,
                                                          tmp_path: Path) -> None:
    rogue = init(tmp_path / "rogue")
    rogue.issue(A, "GGD Amsterdam (vervalst)")  # A's URA, but not from the trusted root
    context = client_context(rogue.folder / f"{A}.pem", rogue.folder / f"{A}.key",
                             rogue.folder / "chain.pem", relay.world.pki.folder / "root.pem")
    with httpx.Client(base_url=relay.url, verify=context, trust_env=False) as client, \
            pytest.raises(httpx.HTTPError):
        client.post("/messages", json=message())


def test_revoked_certificate_is_refused(relay: RunningRelay) -> None:
    response = relay.send(D, message())
    assert response.status_code == 403
    assert response.json()["error"] == "certificate_rejected"
    assert "revoked" in response.json()["message"]


def test_organisation_not_in_the_directory_is_refused(relay: RunningRelay) -> None:
    response = relay.send(C, message())
    assert response.status_code == 403
    assert response.json() == {"error": "unknown_organisation",
                               "message": f"URA {C} is not in the directory"}


def test_certificate_other_than_the_directory_lists_is_refused(relay: RunningRelay) -> None:
    response = relay.send(F, message())
    assert response.status_code == 403
    assert response.json()["error"] == "certificate_not_registered"


# --- storing and delivering -----------------------------------------------------------------


def test_store_and_deliver(relay: RunningRelay) -> None:
    sent = message()
    response = relay.send(A, sent)
    assert response.status_code == 202, response.text
    assert response.json() == {"id": sent["id"], "status": "stored",
                               "hash": hashlib.sha256(sent["body"].encode()).hexdigest()}
    status = relay.wait_status(A, sent["id"], "delivered")
    assert status == {"id": sent["id"], "status": "delivered", "attempts": 1,
                      "last_error": None, "answer": {"status": "stored"}}
    [delivery] = relay.world.inboxes[B].received(sent["id"])
    assert delivery["body"] == sent["body"]
    assert delivery["peer"] == RELAY  # the relay connects with its own certificate
    headers = delivery["headers"]
    assert (headers["ekd-sender-ura"], headers["ekd-kind"], headers["ekd-transfer-id"]) == (
        A, "package", sent["transfer"])
    assert headers["content-type"] == "application/jose"
    # the status is the sender's alone
    with relay.client(B) as client:
        assert client.get(f"/messages/{sent['id']}").status_code == 404


def test_resend_is_idempotent_and_delivered_once(relay: RunningRelay) -> None:
    sent = message()
    first = relay.send(A, sent)
    second = relay.send(A, sent)
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    relay.wait_status(A, sent["id"], "delivered")
    third = relay.send(A, sent)  # after delivery too: same answer, nothing new
    assert third.status_code == 202 and third.json() == first.json()
    time.sleep(0.3)  # several poll rounds
    assert len(relay.world.inboxes[B].received(sent["id"])) == 1


def test_same_id_with_another_body_is_422(relay: RunningRelay) -> None:
    sent = message()
    assert relay.send(A, sent).status_code == 202
    other = relay.send(A, {**sent, "body": sent["body"] + "x"})
    assert other.status_code == 422 and other.json()["error"] == "id_conflict"
    assert sent["body"] not in other.text
    # another sender may use the same id: ids are unique per sender
    assert relay.send(B, {**sent, "recipient": A}).status_code == 202


def test_oversized_message_is_413(relay: RunningRelay) -> None:
    big = message(body="a" * (MAX_BODY + 1) + ".b.c")
    response = relay.send(A, big)
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while streaming
        yield json.dumps(big).encode()

    with relay.client(A) as client:
        streamed = client.post("/messages", content=chunks(),
                               headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413


def test_invalid_messages_are_refused_without_echo(relay: RunningRelay) -> None:
    good = message()
    cases: list[tuple[Any, int, str]] = [
        ({**good, "recipient": "90009999"}, 422, "unknown_recipient"),
        ({**good, "recipient": RELAY}, 422, "unknown_recipient"),
        ({**good, "id": "not-a-uuid"}, 422, "invalid_message"),
        ({**good, "kind": "letter"}, 422, "invalid_message"),
        ({**good, "body": "<xml>secret</xml>"}, 422, "invalid_message"),
        ({**good, "sender": B}, 422, "invalid_message"),  # the sender is never in the body
        ({k: v for k, v in good.items() if k != "transfer"}, 422, "invalid_message"),
        ([good], 422, "invalid_message"),
    ]
    for body, status, code in cases:
        response = relay.send(A, body)
        assert (response.status_code, response.json()["error"]) == (status, code), body
        assert "secret" not in response.text
    with relay.client(A) as client:
        broken = client.post("/messages", content=b"{not json",
                             headers={"Content-Type": "application/json"})
        assert (broken.status_code, broken.json()["error"]) == (400, "invalid_json")
        plain = client.post("/messages", content=b"x", headers={"Content-Type": "text/plain"})
        assert plain.status_code == 415
        assert client.get(f"/messages/{uuid.uuid4()}").status_code == 404
        assert client.get("/messages/nope").status_code == 404
        assert client.delete("/messages").json()["error"] == "method_not_allowed"


def test_busy_recipient_is_retried_until_delivered(relay: RunningRelay) -> None:
    sent = message()
    relay.world.inboxes[B].script[sent["id"]] = [(503, {"error": "busy"}),
                                                 (409, {"error": "processing"})]
    assert relay.send(A, sent).status_code == 202
    status = relay.wait_status(A, sent["id"], "delivered")
    assert status["attempts"] == 3 and status["last_error"] is None
    assert len(relay.world.inboxes[B].received(sent["id"])) == 3


def test_permanent_refusal_fails_at_once(relay: RunningRelay) -> None:
    sent = message()
    refusal = {"error": "invalid_package", "message": "signature does not verify"}
    relay.world.inboxes[B].script[sent["id"]] = [(400, refusal)]
    assert relay.send(A, sent).status_code == 202
    status = relay.wait_status(A, sent["id"], "failed")
    assert (status["attempts"], status["last_error"], status["answer"]) == (
        1, "HTTP 400 (invalid_package)", refusal)
    time.sleep(0.3)
    assert len(relay.world.inboxes[B].received(sent["id"])) == 1


def test_retries_end_after_max_attempts(relay: RunningRelay) -> None:
    sent = message()
    relay.world.inboxes[B].script[sent["id"]] = [(503, {})] * 10
    assert relay.send(A, sent).status_code == 202
    status = relay.wait_status(A, sent["id"], "failed")
    assert status["attempts"] == 4  # --max-attempts 4
    assert "gave up after 4 attempts" in status["last_error"]
    assert len(relay.world.inboxes[B].received(sent["id"])) == 4


def test_nothing_is_sent_to_a_server_that_is_not_the_recipient(relay: RunningRelay) -> None:
    """G's directory endpoint leads to B's server. B's certificate is valid, but it is not
    G's: the relay stops after the handshake, before writing the request (TRANSFER.md:
    "package for org B delivered to org C")."""
    sent = message(G)
    assert relay.send(A, sent).status_code == 202
    status = relay.wait_status(A, sent["id"], "failed")
    assert status["last_error"].startswith(f"recipient not verified: The server (URA {B})")
    assert relay.world.inboxes[B].received(sent["id"]) == []


def test_deliveries_to_one_recipient_reuse_the_verified_connection(relay: RunningRelay
                                                                    ) -> None:
    """One TLS handshake and peer check for a stream of deliveries, not one each; the test
    above shows a pool is never shared with another recipient (G's messages go nowhere)."""
    connections = set()
    for _ in range(3):
        sent = message()
        assert relay.send(A, sent).status_code == 202
        relay.wait_status(A, sent["id"], "delivered")
        [delivery] = relay.world.inboxes[B].received(sent["id"])
        connections.add(delivery["connection"])
    assert len(connections) == 1, connections


def test_receipt_is_forwarded_to_the_sender(relay: RunningRelay) -> None:
    sent = message()
    receipt = "eyJhbGciOiJFUzI1NiJ9..c2lnbmF0dXJl"  # detached JWS, as the receiver signs it
    relay.world.inboxes[B].script[sent["id"]] = [(202, {"status": "stored",
                                                        "receipt": receipt})]
    assert relay.send(A, sent).status_code == 202
    assert relay.wait_status(A, sent["id"], "delivered")["answer"]["receipt"] == receipt
    rid = receipt_id(A, sent["id"])
    [delivery] = wait_for(lambda: relay.world.inboxes[A].received(rid), 10,
                          "the receipt never reached the sender")
    headers = delivery["headers"]
    assert delivery["body"] == receipt and delivery["peer"] == RELAY
    assert (headers["ekd-sender-ura"], headers["ekd-kind"], headers["ekd-transfer-id"]) == (
        B, "receipt", sent["transfer"])
    # the receipt message belongs to the package's recipient, who may follow it
    assert relay.wait_status(B, rid, "delivered")["attempts"] == 1


def test_stored_message_survives_a_killed_relay(request: pytest.FixtureRequest, backend: str,
                                                world: World, tmp_path: Path) -> None:
    """SIGKILL after the 202, while the recipient is down: after a restart on the same store
    the message is delivered (at-least-once; nothing is lost)."""
    recipient = FakeInbox(world.pki, E, world.down_port)
    with relay_database(request, backend, tmp_path, "relay_kill") as url:
        first = start_relay(world, url, tmp_path, *FAST, "--max-attempts", "1000")
        try:
            sent = message(E)
            assert first.send(A, sent).status_code == 202
            first.wait_status(A, sent["id"], "stored")
            wait_for(lambda: first.status(A, sent["id"])["attempts"] >= 1, 10,
                     "no delivery attempt while the recipient is down")
            assert "connection failed" in first.status(A, sent["id"])["last_error"]
        finally:
            first.kill()
        recipient.start()
        second = start_relay(world, url, tmp_path, *FAST, "--max-attempts", "1000")
        try:
            status = second.wait_status(A, sent["id"], "delivered", timeout=15)
            assert status["answer"] == {"status": "stored"}
            assert [r["body"] for r in recipient.received(sent["id"])] == [sent["body"]]
        finally:
            second.process.stop()
            recipient.stop()


def test_serve_refuses_a_misconfiguration(world: World, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ekd.cli.main import app

    common = ["exchange", "serve", "--pki", str(world.pki.folder), "--directory",
              str(world.directory.folder), "--db", f"sqlite:///{tmp_path / 'x.db'}"]
    runner = CliRunner()
    not_a_relay = runner.invoke(app, [*common, "--ura", A])
    assert not_a_relay.exit_code == 2
    assert f"must list URA {A} as role relay" in not_a_relay.output
    revoked = runner.invoke(app, [*common, "--ura", D])
    assert revoked.exit_code == 2 and "revoked" in revoked.output
    missing = runner.invoke(app, [*common, "--ura", "90009999"])
    assert missing.exit_code == 2 and "no such file" in missing.output
    wrong_cert = runner.invoke(app, [*common, "--ura", RELAY, "--cert",
                                     str(world.pki.folder / f"{A}.pem")])
    assert wrong_cert.exit_code == 2 and "do not load" in wrong_cert.output


# --- the store on its own: claims -----------------------------------------------------------


def test_claims_are_exclusive_and_expire(request: pytest.FixtureRequest, backend: str,
                                         tmp_path: Path) -> None:
    with relay_database(request, backend, tmp_path, "relay_claims") as url:
        one, two = RelayStore(url), RelayStore(url)
        try:
            ids = [str(uuid.uuid4()) for _ in range(6)]
            for message_id in ids:
                one.accept(NewMessage(A, message_id, B, "package", str(uuid.uuid4()), "a.b.c"))
            first = one.claim_due("w1", lease=60, limit=4)
            second = two.claim_due("w2", lease=60, limit=4)
            assert len(first) == 4 and len(second) == 2
            assert {m.id for m in first} | {m.id for m in second} == set(ids)
            assert two.claim_due("w2", lease=60, limit=4) == []
            # w1 dies; once the leases ran out, w2 takes everything over, and w1's late
            # result is not recorded
            later = time.time() + 61
            taken = two.claim_due("w2", lease=60, limit=10, now=later)
            assert {m.id for m in taken} == set(ids)
            assert one.delivered(first[0], "w1", {"late": True}) is False
            retaken = next(m for m in taken if m.id == first[0].id)
            assert two.delivered(retaken, "w2", {"ok": True}) is True
            done = two.get(A, retaken.id)
            assert done is not None and (done.status, done.answer) == ("delivered", {"ok": True})
        finally:
            one.dispose()
            two.dispose()
