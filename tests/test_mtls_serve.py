"""Mutual TLS end to end: a real `ekd serve` over HTTPS with organisation certificates.

A test CA issues the server certificate (127.0.0.1) and UZI-style server certificates (URA in
the subjectAltName otherName 2.5.5.5) for three organisations; two of them have a mutual-TLS
client registered (`ekd client add --mtls`), the third has none. All generated at test time;
the server listens on 127.0.0.1 only and runs on a SQLite file in the test's folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from ekd.store.database import Database
from ekd.store.schema import audit_event, resource
from tests.fhir_helpers import JSON, id_from_location, patient
from tests.tls_helpers import Pki, ServedEkd, make_pki, serve_ekd

URA_A = "90000123"
URA_B = "90000456"
URA_NONE = "90000789"  # a valid certificate, but no mutual-TLS client registered


@dataclass
class Setup:
    pki: Pki
    server: ServedEkd
    database_url: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    from ekd.cli.main import app

    work = tmp_path_factory.mktemp("mtls-serve")
    pki = make_pki(work / "pki", [URA_A, URA_B, URA_NONE])
    url = f"sqlite:///{work / 'ekd.db'}"
    runner = CliRunner()
    for client_id, ura in (("org-a-system", URA_A), ("org-b-system", URA_B)):
        added = runner.invoke(app, ["client", "add", "--client-id", client_id, "--ura", ura,
                                    "--name", f"Organisatie {ura}", "--scope", "system/*.cruds",
                                    "--roles", "system", "--mtls", "--database-url", url])
        assert added.exit_code == 0, added.output
    with serve_ekd(pki, url, work) as server:
        yield Setup(pki, server, url)


def _client(served: Setup, ura: str | None) -> httpx.Client:
    return httpx.Client(verify=served.pki.context(ura), timeout=20.0,
                        headers={"Accept": JSON})


def _outcome_code(response: httpx.Response) -> str:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"][0]["code"]


@pytest.fixture(scope="module")
def patient_of_a(served: Setup) -> str:
    """A's patient, created with A's certificate and no token."""
    with _client(served, URA_A) as http:
        created = http.post(f"{served.server.base}/Patient", json=patient("Certificaat"),
                            headers={"Content-Type": JSON})
    assert created.status_code == 201, created.text
    return id_from_location(created.headers["location"])


def test_certificate_without_token_creates_and_reads(served: Setup, patient_of_a: str) -> None:
    with _client(served, URA_A) as http:
        read = http.get(f"{served.server.base}/Patient/{patient_of_a}")
        assert read.status_code == 200, read.text
        assert read.json()["name"] == [{"family": "Certificaat"}]
        found = http.get(f"{served.server.base}/Patient", params={"family": "Certificaat"})
    assert found.status_code == 200
    assert [e["resource"]["id"] for e in found.json().get("entry", [])] == [patient_of_a]
    # Stored for A's URA (the organisation of the certificate's registered client), and the
    # reads were audited for A's mutual-TLS client.
    db = Database(served.database_url)
    try:
        with db.read() as conn:
            orgs = {r.org for r in conn.execute(select(resource.c.org).where(
                resource.c.id == patient_of_a))}
            audited = conn.execute(select(audit_event.c.org, audit_event.c.client_id,
                                          audit_event.c.subtype, audit_event.c.outcome)
                                   .where(audit_event.c.client_id == "org-a-system")
                                   .order_by(audit_event.c.pk)).all()
    finally:
        db.dispose()
    assert orgs == {URA_A}
    assert [tuple(r) for r in audited][:3] == [
        (URA_A, "org-a-system", "create", "0"),
        (URA_A, "org-a-system", "read", "0"),
        (URA_A, "org-a-system", "search-type", "0"),
    ]


def test_other_organisations_certificate_cannot_read(served: Setup, patient_of_a: str) -> None:
    with _client(served, URA_B) as http:
        read = http.get(f"{served.server.base}/Patient/{patient_of_a}")
        assert read.status_code == 404, read.text
        assert _outcome_code(read) == "not-found"
        assert "Certificaat" not in read.text
        found = http.get(f"{served.server.base}/Patient", params={"family": "Certificaat"})
        assert found.status_code == 200
        assert found.json().get("entry", []) == []
        # B's own patient is B's: it works for B, and A cannot see it either.
        created = http.post(f"{served.server.base}/Patient", json=patient("VanB", bsn=None),
                            headers={"Content-Type": JSON})
        assert created.status_code == 201, created.text
        b_id = id_from_location(created.headers["location"])
        assert http.get(f"{served.server.base}/Patient/{b_id}").status_code == 200
    with _client(served, URA_A) as http:
        assert http.get(f"{served.server.base}/Patient/{b_id}").status_code == 404


def test_certificate_of_organisation_without_mtls_client_is_refused(
        served: Setup, patient_of_a: str) -> None:
    with _client(served, URA_NONE) as http:
        read = http.get(f"{served.server.base}/Patient/{patient_of_a}")
        created = http.post(f"{served.server.base}/Patient", json=patient("Niemand"),
                            headers={"Content-Type": JSON})
    for answer in (read, created):
        assert answer.status_code == 401, answer.text
        assert _outcome_code(answer) == "login"
        assert "No client is registered for mutual TLS" in answer.text
        assert answer.headers["www-authenticate"].startswith('Bearer realm="ekd"')
    assert "Certificaat" not in read.text


def test_no_certificate_and_no_token_is_refused(served: Setup, patient_of_a: str) -> None:
    with _client(served, None) as http:
        read = http.get(f"{served.server.base}/Patient/{patient_of_a}")
        search = http.get(f"{served.server.base}/Patient")
        metadata = http.get(f"{served.server.base}/metadata")
    for answer in (read, search):
        assert answer.status_code == 401, answer.text
        assert _outcome_code(answer) == "login"
        assert answer.headers["www-authenticate"].startswith('Bearer realm="ekd"')
    assert "Certificaat" not in read.text
    assert metadata.status_code == 200  # the CapabilityStatement needs no credentials
    assert metadata.json()["resourceType"] == "CapabilityStatement"


def test_bearer_token_still_works_over_tls(served: Setup, patient_of_a: str) -> None:
    token = served.server.token()
    auth = {"Authorization": f"Bearer {token}"}
    with _client(served, None) as http:
        created = http.post(f"{served.server.base}/Patient", json=patient("Token", bsn=None),
                            headers={**auth, "Content-Type": JSON})
        assert created.status_code == 201, created.text
        mine = id_from_location(created.headers["location"])
        assert http.get(f"{served.server.base}/Patient/{mine}", headers=auth).status_code == 200
        # The development organisation is not A: A's patient stays invisible.
        assert http.get(f"{served.server.base}/Patient/{patient_of_a}",
                        headers=auth).status_code == 404
        forged = http.get(f"{served.server.base}/Patient/{mine}",
                          headers={"Authorization": f"Bearer {token[:-4]}AAAA"})
    assert forged.status_code == 401
    assert _outcome_code(forged) == "login"


def test_certificate_of_unknown_ca_fails_the_handshake(served: Setup,
                                                       tmp_path: Path) -> None:
    stranger = make_pki(tmp_path / "other", [URA_A])
    context = served.pki.context()  # trusts the server...
    context.load_cert_chain(*map(str, stranger.clients[URA_A]))  # ...but not trusted by it
    with httpx.Client(verify=context, timeout=20.0) as http, pytest.raises(httpx.TransportError):
        http.get(f"{served.server.base}/Patient")
