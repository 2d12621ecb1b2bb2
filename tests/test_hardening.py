"""HTTP hardening: security headers, CORS, an access log without BSNs, per-client rate limits."""

from __future__ import annotations

import logging
import threading

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.testclient import TestClient

from ekd.api.middleware import install, redact_query
from ekd.config import Settings
from ekd.security.ratelimit import RateLimiter, retry_after

BSN = "999901795"  # passes the eleven-test (a test BSN)
ORIGIN = "https://jgz-app.example"


def make_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI()

    @app.get("/fhir/Patient")
    def search() -> JSONResponse:
        return JSONResponse({"resourceType": "Bundle"}, headers={"ETag": 'W/"1"'})

    @app.get("/fhir/metadata")
    def metadata() -> Response:
        return Response("{}", media_type="application/fhir+json",
                        headers={"Cache-Control": "max-age=60"})

    @app.post("/auth/token")
    def token() -> JSONResponse:
        return JSONResponse({"access_token": "x"})

    @app.get("/health/live")
    def live() -> JSONResponse:
        return JSONResponse({"status": "ok"}, headers={"X-Frame-Options": "SAMEORIGIN"})

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("unexpected")

    install(app, settings or Settings())
    return app


@pytest.fixture
def client() -> TestClient:
    return TestClient(make_app(), raise_server_exceptions=False)


# --- security headers -------------------------------------------------------------------------


def test_security_headers_on_fhir_responses(client: TestClient) -> None:
    response = client.get("/fhir/Patient")
    assert response.status_code == 200
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-security-policy"] == (
        "default-src 'none'; frame-ancestors 'none'")
    assert "strict-transport-security" not in response.headers  # plain http


def test_no_store_on_auth_and_unknown_fhir_paths(client: TestClient) -> None:
    assert client.post("/auth/token").headers["cache-control"] == "no-store"
    missing = client.get("/fhir/Nothing/here")
    assert missing.status_code == 404
    assert missing.headers["cache-control"] == "no-store"


def test_cache_control_set_by_the_app_is_kept(client: TestClient) -> None:
    assert client.get("/fhir/metadata").headers.get_list("cache-control") == ["max-age=60"]


def test_no_cache_control_outside_fhir_and_auth(client: TestClient) -> None:
    response = client.get("/health/live")
    assert "cache-control" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"
    # A header the app chose itself is not overwritten or doubled.
    assert response.headers.get_list("x-frame-options") == ["SAMEORIGIN"]


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_no_csp_on_openapi_pages(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert "content-security-policy" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"


def test_hsts_over_https() -> None:
    client = TestClient(make_app(), base_url="https://testserver")
    response = client.get("/fhir/Patient")
    assert response.headers["strict-transport-security"].startswith("max-age=")


def test_headers_and_log_on_unhandled_error(client: TestClient,
                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ekd.access"):
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"]
    assert [r.http_status for r in caplog.records if r.name == "ekd.access"] == [500]


def test_install_after_start_refused(client: TestClient) -> None:
    client.get("/health/live")
    with pytest.raises(RuntimeError):
        install(client.app, Settings())


# --- CORS -------------------------------------------------------------------------------------

PREFLIGHT = {"Origin": ORIGIN, "Access-Control-Request-Method": "PUT",
             "Access-Control-Request-Headers": "Authorization, Content-Type, If-Match"}


def test_cors_off_by_default(client: TestClient) -> None:
    response = client.get("/fhir/Patient", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in response.headers
    preflight = client.options("/fhir/Patient", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-methods" not in preflight.headers


def test_cors_when_configured() -> None:
    client = TestClient(make_app(Settings(cors_origins=(ORIGIN,))))
    preflight = client.options("/fhir/Patient", headers=PREFLIGHT)
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "PUT" in preflight.headers["access-control-allow-methods"]
    allowed = preflight.headers["access-control-allow-headers"].lower()
    for header in ("authorization", "content-type", "if-match", "if-none-exist",
                   "if-none-match", "if-modified-since", "prefer"):
        assert header in allowed
    assert "access-control-allow-credentials" not in preflight.headers

    response = client.get("/fhir/Patient", headers={"Origin": ORIGIN})
    assert response.headers["access-control-allow-origin"] == ORIGIN
    exposed = response.headers["access-control-expose-headers"].lower()
    for header in ("etag", "location", "content-location", "last-modified"):
        assert header in exposed
    assert response.headers["x-content-type-options"] == "nosniff"


def test_cors_other_origin_not_allowed() -> None:
    client = TestClient(make_app(Settings(cors_origins=(ORIGIN,))))
    preflight = client.options("/fhir/Patient",
                               headers={**PREFLIGHT, "Origin": "https://evil.example"})
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    response = client.get("/fhir/Patient", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers


# --- query redaction --------------------------------------------------------------------------


@pytest.mark.parametrize("query, expected", [
    (f"identifier=http://fhir.nl/fhir/NamingSystem/bsn|{BSN}", "identifier=***"),
    (f"identifier=http%3A%2F%2Ffhir.nl%2Ffhir%2FNamingSystem%2Fbsn%7C{BSN}", "identifier=***"),
    ("identifier=local-number-42", "identifier=***"),  # any identifier value, not only BSNs
    ("Identifier=x", "Identifier=***"),
    ("patient.identifier=urn:oid:2.16.840.1.113883.2.4.6.3|123", "patient.identifier=***"),
    ("subject:Patient.identifier=x|1", "subject:Patient.identifier=***"),
    ("subject:identifier=x|1", "subject:identifier=***"),  # the R4 :identifier modifier
    ("identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|446053",
     "identifier:of-type=***"),
    ("identifier:missing=false", "identifier:missing=***"),
    ("_has:Observation:patient:identifier=x", "_has:Observation:patient:identifier=***"),
    ("jgz-identifier=12", "jgz-identifier=***"),
    ("_cursor=eyJrIjoxfQ&_count=10", "_cursor=***&_count=10"),
    (f"name={BSN}", "name=***"),
    (f"name=Jan%20{BSN}", "name=Jan%20***"),
    ("name=9999.01.795", "name=***"),  # written with separators
    ("name=%39%39%39%39%30%31%37%39%35", "name=***"),  # percent-encoded digits
    (f"_content=a+{BSN}+b", "_content=a%20***%20b"),
    (f"{BSN}", "***"),
    (f"_has:Observation:subject:{BSN}=1", "_has:Observation:subject:***=1"),
    (f"code=http://loinc.org|8302-2&value-quantity={BSN}", "code=http://loinc.org|8302-2"
     "&value-quantity=***"),
    # Kept: non-identifier names and values, numbers that are no BSN.
    ("name=Jansen&birthdate=ge2020-01-01&_count=10", "name=Jansen&birthdate=ge2020-01-01"
     "&_count=10"),
    ("_id=123456789", "_id=123456789"),  # nine digits failing the eleven-test
    ("_id=1999901795", "_id=1999901795"),  # ten digits: not a BSN
    ("name=van+der+Berg", "name=van+der+Berg"),
    ("_sort=identifier&_include=Observation:subject", "_sort=identifier"
     "&_include=Observation:subject"),
    ("a=1&&b", "a=1&&b"),
    ("", ""),
])
def test_redact_query(query: str, expected: str) -> None:
    assert redact_query(query) == expected


def test_access_log_has_no_bsn(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ekd.access"):
        client.get(f"/fhir/Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn|{BSN}"
                   f"&name={BSN}&_count=10")
    records = [r for r in caplog.records if r.name == "ekd.access"]
    assert len(records) == 1
    record = records[0]
    line = record.getMessage()
    assert BSN not in caplog.text
    assert "GET /fhir/Patient?" in line
    assert "identifier=***" in line and "name=***" in line and "_count=10" in line
    assert " 200 " in line and line.endswith("ms")
    assert record.levelno == logging.INFO
    assert record.http_method == "GET" and record.http_path == "/fhir/Patient"
    assert record.http_status == 200 and record.duration_ms >= 0
    assert record.client_address.startswith("testclient")


def test_access_log_without_query(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ekd.access"):
        client.get("/health/live")
    (record,) = [r for r in caplog.records if r.name == "ekd.access"]
    assert '"GET /health/live"' in record.getMessage()


# --- rate limiting ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_throttled() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60, 3, clock=clock)  # one per second, bursts of three
    assert [limiter.check("a") for _ in range(3)] == [None, None, None]
    wait = limiter.check("a")
    assert wait is not None and wait == pytest.approx(1.0)
    assert limiter.check("b") is None  # other clients are not affected
    assert retry_after(wait) == "1"


def test_refill_over_time() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60, 3, clock=clock)
    for _ in range(3):
        limiter.check("a")
    clock.now += 0.5
    assert limiter.check("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.check("a") is None
    assert limiter.check("a") is not None
    clock.now += 3600  # refills, but never beyond the burst
    assert [limiter.check("a") for _ in range(4)][:3] == [None, None, None]
    assert limiter.check("a") is not None


def test_rate_zero_is_off() -> None:
    limiter = RateLimiter(0, 0)
    assert not limiter.enabled
    assert all(limiter.check("a") is None for _ in range(10_000))
    assert len(limiter) == 0


def test_burst_zero_still_allows_the_steady_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(120, 0, clock=clock)
    assert limiter.check("a") is None
    assert limiter.check("a") == pytest.approx(0.5)


def test_memory_is_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60, 5, max_keys=10, clock=clock)
    for i in range(1000):
        limiter.check(f"client-{i}")
    assert len(limiter) == 10
    assert "client-999" in limiter._buckets  # the most recent are kept


def test_idle_keys_are_evicted() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60, 2, clock=clock)  # full again after 2 s
    for i in range(8):
        limiter.check(f"client-{i}")
    assert len(limiter) == 8
    clock.now += 2.5
    limiter.check("new")
    limiter.check("new")
    assert len(limiter) == 1


def test_thread_safe() -> None:
    limiter = RateLimiter(1, 50, clock=FakeClock())  # the clock stands still: no refill
    allowed: list[bool] = []
    lock = threading.Lock()

    def hammer() -> None:
        for _ in range(100):
            ok = limiter.check("shared") is None
            with lock:
                allowed.append(ok)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(allowed) == 50


def test_retry_after_rounds_up() -> None:
    assert retry_after(0.01) == "1"
    assert retry_after(1.0) == "1"
    assert retry_after(1.01) == "2"


def test_negative_settings_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(-1, 10)
    with pytest.raises(ValueError):
        RateLimiter(60, -1)
