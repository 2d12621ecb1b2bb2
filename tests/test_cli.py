"""The `ekd` command: help, migrations and a real server process on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from ekd.cli.main import app

runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "db", "version"):
        assert command in result.output


def test_db_upgrade_and_current(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert "empty" in runner.invoke(app, ["db", "current", "--database-url", url]).output
    up = runner.invoke(app, ["db", "upgrade", "--database-url", url])
    assert up.exit_code == 0, up.output
    assert "up to date" in runner.invoke(app, ["db", "current", "--database-url", url]).output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_starts_on_an_empty_database_and_says_where(tmp_path: Path, workers: int) -> None:
    """Development mode on a fresh machine: keys and a local client are made, a token is
    printed, and only requests with it get data."""
    port = _free_port()
    env = {**os.environ, "EKD_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
           "EKD_KEY_DIR": str(tmp_path / "keys")}
    env.pop("EKD_MODE", None)
    env["EKD_JGZ_ENFORCE"] = "false"  # a plain Patient below; the JGZ rules are tested elsewhere
    proc = subprocess.Popen(
        [sys.executable, "-m", "ekd", "serve", "--port", str(port), "--workers", str(workers)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["fhirVersion"] == "4.0.1"
        token = next(line.strip()[len("TOKEN="):] for line in list(lines)
                     if line.startswith("TOKEN="))
        patient = {"resourceType": "Patient", "gender": "female"}
        anonymous = httpx.post(f"http://127.0.0.1:{port}/fhir/Patient", json=patient)
        assert anonymous.status_code == 401
        created = httpx.post(f"http://127.0.0.1:{port}/fhir/Patient", json=patient,
                             headers={"Authorization": f"Bearer {token}"})
        assert created.status_code == 201
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        reader.join(timeout=5)
    output = "".join(lines)
    assert f"http://127.0.0.1:{port}/fhir" in output
    assert "serve.db" in output
    assert "development mode" in output
    assert (tmp_path / "keys").is_dir()


def test_serve_refuses_production_without_keys(tmp_path: Path) -> None:
    env = {**os.environ, "EKD_DATABASE_URL": f"sqlite:///{tmp_path / 'prod.db'}",
           "EKD_KEY_DIR": str(tmp_path / "keys"), "EKD_MODE": "production"}
    result = subprocess.run([sys.executable, "-m", "ekd", "serve", "--port", str(_free_port())],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "signing key" in (result.stdout + result.stderr)


def test_validate_command_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"resourceType": "Patient", "birthDate": "2022-03-04"}')
    bad = tmp_path / "bad.xml"
    bad.write_text('<Patient xmlns="http://hl7.org/fhir"><birthDate value="2022-13-45"/>'
                   "</Patient>")
    ok = runner.invoke(app, ["validate", str(good)])
    assert ok.exit_code == 0, ok.output
    assert "1 valid, 0 invalid" in ok.output
    result = runner.invoke(app, ["validate", str(good), str(bad)])
    assert result.exit_code == 1
    assert "Patient.birthDate" in result.output and "1 valid, 1 invalid" in result.output


def test_reindex_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'reindex.db'}"
    assert runner.invoke(app, ["db", "upgrade", "--database-url", url]).exit_code == 0
    first = runner.invoke(app, ["reindex", "--database-url", url])
    assert first.exit_code == 0, first.output
    assert "Reindexed 0 of 0 resources" in first.output
    again = runner.invoke(app, ["reindex", "--database-url", url])
    assert "Already indexed" in again.output
    redo = runner.invoke(app, ["reindex", "--database-url", url, "--restart", "-t", "Patient"])
    assert redo.exit_code == 0 and "Reindexed 0 of 0" in redo.output


def test_db_adopt_gives_ownerless_resources_to_an_organisation(tmp_path: Path) -> None:
    """Data stored before organisation scoping is invisible to every caller until adopted."""
    from ekd.api.app import build_services
    from ekd.config import Settings
    from ekd.interaction import route
    from ekd.security.principal import Principal, Role
    from ekd.security.scopes import parse_scopes
    from ekd.store.database import Database

    url = f"sqlite:///{tmp_path / 'adopt.db'}"
    db = Database(url)
    db.upgrade()
    services = build_services(Settings(database_url=url, jgz_enforce=False), db)
    with db.write() as conn:  # as the server stored it before #6: no owner
        services.store(conn).create("Patient", "oud", {"resourceType": "Patient"})
        services.store(conn).create("ValueSet", "vs", {"resourceType": "ValueSet",
                                                      "status": "draft"})
    caller = Principal(org="90000010", client_id="c", role=Role.SYSTEM,
                       scopes=parse_scopes("system/*.cruds"))

    def read(rtype: str, rid: str) -> int:
        req = route.parse_path("GET", f"/{rtype}/{rid}", [], "http://x/fhir")
        req.principal = caller
        try:
            return route.handle(services, req).status
        except Exception as exc:
            return getattr(exc, "status", 500)

    assert read("Patient", "oud") == 404
    assert read("ValueSet", "vs") == 200  # shared
    bad = runner.invoke(app, ["db", "adopt", "--ura", "123", "--database-url", url])
    assert bad.exit_code != 0
    result = runner.invoke(app, ["db", "adopt", "--ura", "90000010", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert "1 resources now belong to organisation 90000010" in result.output
    assert read("Patient", "oud") == 200
    assert read("ValueSet", "vs") == 200
    db.dispose()
