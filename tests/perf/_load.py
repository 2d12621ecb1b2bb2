"""The HTTP load driver: the same client, concurrency and accounting for every target.

Why worker threads with one keep-alive connection each: that is how a real integration (a JGZ
client application, an import job) talks to the server, and per-request latency is measured
around the full request including reading the body. The machine has 2 cores shared by client
and servers, so concurrency stays modest (default 4) and is identical for every target.

Why two client implementations: httpx is the default (what the project's own tests use), but
it costs ~0.5 ms of client CPU per request, which on 2 cores is the same order as a trivial
server's own work; the stdlib ``http.client`` costs ~0.15 ms. ``--client stdlib`` shows how much
of a fast target's figure is the client. The client CPU per request is reported either way.

A job is a unit of work taken from a shared queue: a whole chart for single creates (its
resources depend on the Patient's server-assigned id, so they go in order on one connection),
a bundle for transactions, one resource for reads.
"""

from __future__ import annotations

import http.client
import queue
import re
import resource
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

import httpx
import orjson
from _workload import Chart

FHIR_JSON = "application/fhir+json"
HEADERS = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
#: ``.../Patient/<id>/_history/1`` or ``Patient/<id>``, absolute or relative.
LOCATION_RE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9.\-]{1,64})(?:/_history/[^/]+)?/?$")
#: Give up on a test when this many requests failed before a single one succeeded.
FAIL_FAST_AFTER = 20
CLIENTS = ("httpx", "stdlib")

J = TypeVar("J")
ResourceKey = tuple[str, str]

#: Bearer tokens by server origin (``http://127.0.0.1:<port>``). ekd answers 401 without one
#: since #6; servers that print no token (the peer, older ekd trees) get no header.
_TOKENS: dict[str, str] = {}


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def auth_headers(url: str) -> dict[str, str]:
    """The Authorization header for a request to ``url``, if its server has a token."""
    token = _TOKENS.get(_origin(url)) if _TOKENS else None
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextmanager
def bearer(server: Any) -> Iterator[str | None]:
    """Send ``server``'s development token (its ``TOKEN=`` line) with every request to it
    while the block runs; no token printed (sekmet-fhir, ekd before #6): no header."""
    try:
        token: str | None = server.token()
    except RuntimeError:
        token = None
    origin = f"http://127.0.0.1:{server.port}"
    if token:
        _TOKENS[origin] = token
    try:
        yield token
    finally:
        _TOKENS.pop(origin, None)


# --------------------------------------------------------------------------- transports


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]  # lower-case names
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class TransportError(Exception):
    """Anything that kept a request from getting an HTTP answer."""


class Transport(Protocol):
    def request(self, method: str, url: str, content: bytes | None = None) -> Reply: ...

    def close(self) -> None: ...


class HttpxTransport:
    """httpx.Client limited to one keep-alive connection."""

    def __init__(self, timeout_s: float) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self._client = httpx.Client(timeout=timeout_s, limits=limits, headers=HEADERS)

    def request(self, method: str, url: str, content: bytes | None = None) -> Reply:
        try:
            r = self._client.request(method, url, content=content, headers=auth_headers(url))
        except httpx.HTTPError as e:
            raise TransportError(f"{type(e).__name__}: {e}") from e
        return Reply(r.status_code, r.headers, r.content)

    def close(self) -> None:
        self._client.close()


class StdlibTransport:
    """One ``http.client.HTTPConnection`` per worker: the cheapest keep-alive client."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout = timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self._netloc = ""

    def request(self, method: str, url: str, content: bytes | None = None) -> Reply:
        parts = urlsplit(url)
        if self._conn is None or parts.netloc != self._netloc:
            self.close()
            self._conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                                    timeout=self._timeout)
            self._netloc = parts.netloc
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            self._conn.request(method, path, body=content,
                               headers={**HEADERS, **auth_headers(url)})
            r = self._conn.getresponse()
            body = r.read()
        except (OSError, http.client.HTTPException) as e:
            self.close()  # the next request reconnects
            raise TransportError(f"{type(e).__name__}: {e}") from e
        headers = {k.lower(): v for k, v in r.getheaders()}
        if r.will_close:
            self.close()
        return Reply(r.status, headers, body)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def make_transport(kind: str, timeout_s: float) -> Transport:
    if kind == "stdlib":
        return StdlibTransport(timeout_s)
    return HttpxTransport(timeout_s)


# --------------------------------------------------------------------------- accounting


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, round(q / 100 * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def process_cpu_s() -> float:
    """CPU time of this whole process (all client threads), user + system."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Measurement:
    """Figures of one test on one target; ``na`` says why there are none."""

    target: str
    test: str
    resources: int = 0
    requests: int = 0
    errors: int = 0
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    first_error: str | None = None
    na: str | None = None
    note: str = ""
    #: What one latency sample is (a request, a bundle, a batch).
    unit: str = "request"
    #: CPU the benchmark process itself spent during the test (the client's share of the box).
    client_cpu_s: float | None = None

    @property
    def rate(self) -> float | None:
        if self.na or self.wall_s <= 0 or self.resources == 0:
            return None
        return self.resources / self.wall_s

    def pct(self, q: float) -> float | None:
        return percentile(sorted(self.latencies_ms), q)

    @property
    def client_ms_per_request(self) -> float | None:
        if self.client_cpu_s is None or not self.requests:
            return None
        return self.client_cpu_s * 1000 / self.requests

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "test": self.test, "resources": self.resources,
            "requests": self.requests, "errors": self.errors, "wall_s": round(self.wall_s, 4),
            "resources_per_s": _r(self.rate, 1),
            "p50_ms": _r(self.pct(50)), "p95_ms": _r(self.pct(95)), "p99_ms": _r(self.pct(99)),
            "latency_unit": self.unit,
            "client_cpu_ms_per_request": _r(self.client_ms_per_request, 3),
            "first_error": self.first_error, "na": self.na, "note": self.note,
        }


def _r(v: float | None, digits: int = 2) -> float | None:
    return None if v is None else round(v, digits)


class Recorder:
    """Per-worker accounting; merged after the run so workers never contend on a lock."""

    def __init__(self, abort: threading.Event) -> None:
        self.latencies_ms: list[float] = []
        self.requests = 0
        self.errors = 0
        self.resources = 0
        self.first_error: str | None = None
        self.keys: list[ResourceKey] = []
        self._abort = abort

    def fail(self, what: str, count: int = 1) -> None:
        self.errors += count
        if self.first_error is None:
            self.first_error = what[:300]

    def call(self, client: Transport, method: str, url: str, content: bytes | None = None,
             expect: tuple[int, ...] = (200, 201)) -> Reply | None:
        """One timed request; None (and an error recorded) unless the status is expected."""
        t0 = time.perf_counter()
        try:
            r = client.request(method, url, content)
        except TransportError as e:
            self.requests += 1
            self.fail(f"{method} {url}: {e}")
            self._check_abort()
            return None
        dt_ms = (time.perf_counter() - t0) * 1000
        self.requests += 1
        if r.status not in expect:
            self.fail(f"{method} {url} -> HTTP {r.status}: {outcome_text(r)}")
            self._check_abort()
            return None
        self.latencies_ms.append(dt_ms)
        return r

    def _check_abort(self) -> None:
        if self.resources == 0 and self.errors >= FAIL_FAST_AFTER:
            self._abort.set()


def outcome_text(r: Reply) -> str:
    """The diagnostics of an OperationOutcome, else the start of the body."""
    try:
        body = orjson.loads(r.content)
        issues = body.get("issue") or []
        text = "; ".join(
            str(i.get("diagnostics") or i.get("details", {}).get("text") or i.get("code"))
            for i in issues[:3])
        if text:
            return text
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return r.text[:200].replace("\n", " ")


def key_from_location(location: str | None) -> ResourceKey | None:
    if not location:
        return None
    m = LOCATION_RE.search(location.split("?", 1)[0])
    return (m.group(1), m.group(2)) if m else None


def key_from_response(r: Reply, resource_type: str) -> ResourceKey | None:
    """Location header first (the standard), the body's id as a fallback."""
    key = key_from_location(r.headers.get("location") or r.headers.get("content-location"))
    if key:
        return key
    try:
        body = orjson.loads(r.content)
        if isinstance(body, dict) and body.get("id"):
            return (body.get("resourceType") or resource_type, str(body["id"]))
    except orjson.JSONDecodeError:
        pass
    return None


class Driver(Generic[J]):
    """Runs jobs from a queue on N worker threads, each with its own keep-alive connection."""

    def __init__(self, concurrency: int, timeout_s: float, max_seconds: float,
                 client: str = "httpx") -> None:
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_seconds = max_seconds
        self.client = client

    def run(self, target: str, test: str, jobs: Sequence[J],
            fn: Callable[[Transport, J, Recorder], None], unit: str = "request"
            ) -> tuple[Measurement, list[ResourceKey]]:
        q: queue.SimpleQueue[J] = queue.SimpleQueue()
        for j in jobs:
            q.put(j)
        abort = threading.Event()
        recorders = [Recorder(abort) for _ in range(self.concurrency)]
        start_gate = threading.Barrier(self.concurrency + 1)
        deadline_hit = threading.Event()
        t_start = 0.0

        def worker(rec: Recorder) -> None:
            client = make_transport(self.client, self.timeout_s)
            try:
                try:
                    start_gate.wait()
                except threading.BrokenBarrierError:  # the run was interrupted before it began
                    return
                while not abort.is_set():
                    if time.perf_counter() - t_start > self.max_seconds:
                        deadline_hit.set()
                        return
                    try:
                        job = q.get_nowait()
                    except queue.Empty:
                        return
                    try:
                        fn(client, job, rec)
                    except Exception as e:  # a bug in a job function must not hang the run
                        rec.fail(f"client error: {type(e).__name__}: {e}")
                        abort.set()
            finally:
                client.close()

        threads = [threading.Thread(target=worker, args=(r,), daemon=True) for r in recorders]
        for t in threads:
            t.start()
        t_start = time.perf_counter()
        try:
            start_gate.wait()  # every worker has its connection object ready
            cpu0 = process_cpu_s()  # after client set-up (httpx builds an SSL context per client)
            for t in threads:
                t.join()
        except BaseException:  # Ctrl-C / SIGTERM: stop the workers before the server goes
            abort.set()
            start_gate.abort()
            raise
        wall = time.perf_counter() - t_start
        cpu = process_cpu_s() - cpu0

        m = Measurement(target, test, wall_s=wall, unit=unit, client_cpu_s=cpu)
        keys: list[ResourceKey] = []
        for rec in recorders:
            m.latencies_ms.extend(rec.latencies_ms)
            m.requests += rec.requests
            m.errors += rec.errors
            m.resources += rec.resources
            m.first_error = m.first_error or rec.first_error
            keys.extend(rec.keys)
        if deadline_hit.is_set():
            m.note = f"stopped at the {self.max_seconds:.0f}s limit"
        if m.resources == 0:
            m.na = m.first_error or "nothing succeeded"
        elif abort.is_set():
            m.note = (m.note + "; " if m.note else "") + "aborted early"
        return m, keys


# --------------------------------------------------------------------------- the three tests


def create_chart(base: str) -> Callable[[Transport, Chart, Recorder], None]:
    """Single creates: one POST per resource, references to server-assigned ids."""

    def job(client: Transport, chart: Chart, rec: Recorder) -> None:
        refs: dict[str, str] = {}
        for n, item in enumerate(chart.items):
            try:
                body = item.render(refs.__getitem__)
            except KeyError:
                rec.fail(f"{item.key}: a resource it refers to was not created")
                continue
            r = rec.call(client, "POST", f"{base}/{item.resource_type}",
                         content=orjson.dumps(body), expect=(201, 200))
            key = key_from_response(r, item.resource_type) if r is not None else None
            if r is not None and key is None:
                rec.fail(f"POST {item.resource_type}: no Location header and no id in the body")
            if key is None:
                if item.resource_type == "Patient":  # the rest of the chart needs its id
                    rec.fail("chart skipped after its Patient failed", len(chart.items) - n - 1)
                    return
                continue
            refs[item.key] = f"{key[0]}/{key[1]}"
            rec.resources += 1
            rec.keys.append(key)

    return job


def post_transaction(base: str) -> Callable[[Transport, tuple[bytes, int], Recorder], None]:
    """Transaction ingest: one POST [base] per bundle; every entry must come back 2xx."""

    def job(client: Transport, bundle: tuple[bytes, int], rec: Recorder) -> None:
        payload, n_entries = bundle
        r = rec.call(client, "POST", base, content=payload, expect=(200,))
        if r is None:
            return
        try:
            body = orjson.loads(r.content)
        except orjson.JSONDecodeError:
            rec.fail("transaction response is not JSON", n_entries)
            return
        if not isinstance(body, dict) or body.get("type") != "transaction-response":
            rec.fail(f"expected a transaction-response Bundle, got {str(body)[:120]}", n_entries)
            return
        ok = 0
        for e in body.get("entry") or []:
            resp = e.get("response") or {}
            if str(resp.get("status", "")).startswith("2"):
                ok += 1
                key = key_from_location(resp.get("location"))
                if key:
                    rec.keys.append(key)
        if ok != n_entries:
            rec.fail(f"transaction answered {ok}/{n_entries} entries with 2xx", n_entries - ok)
        rec.resources += ok

    return job


def read_resource(base: str) -> Callable[[Transport, ResourceKey, Recorder], None]:
    """Reads: GET [base]/Type/id, 200 expected."""

    def job(client: Transport, key: ResourceKey, rec: Recorder) -> None:
        if rec.call(client, "GET", f"{base}/{key[0]}/{key[1]}", expect=(200,)) is not None:
            rec.resources += 1

    return job


def warm_up(base: str, chart: Chart, timeout_s: float, client_kind: str) -> str | None:
    """Touch every code path once (imports, model building, pool setup), unmeasured.

    Why: the first create of a type in a fresh Python server can take 100x longer (lazy
    imports, pydantic model building); that is start-up cost, not throughput. Returns the
    reason when the server cannot even do this.
    """
    client = make_transport(client_kind, timeout_s)
    try:
        client.request("GET", f"{base}/metadata")
        refs: dict[str, str] = {}
        seen: set[str] = set()
        for item in chart.items:
            if item.resource_type in seen:
                continue
            seen.add(item.resource_type)
            r = client.request("POST", f"{base}/{item.resource_type}",
                               orjson.dumps(item.render(refs.__getitem__)))
            if r.status not in (200, 201):
                return (f"warm-up POST {item.resource_type} -> HTTP {r.status}: "
                        f"{outcome_text(r)}")
            key = key_from_response(r, item.resource_type)
            if key is None:
                return f"warm-up POST {item.resource_type}: no Location header and no id"
            refs[item.key] = f"{key[0]}/{key[1]}"
            client.request("GET", f"{base}/{key[0]}/{key[1]}")
        # a small transaction too; its outcome is left to the measured test to report
        bundle = Chart(chart.items[:3]).transaction_bundle()
        client.request("POST", base, orjson.dumps(bundle))
    except TransportError as e:
        return f"warm-up failed: {e}"
    finally:
        client.close()
    return None
