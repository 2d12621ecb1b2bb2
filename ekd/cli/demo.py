"""`ekd demo-data`: synthetic JGZ dossiers, written as NDJSON or loaded into a FHIR server."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)

_NINE_DIGITS = re.compile(r"(?<!\d)\d{9}(?!\d)")


class _Poster(Protocol):
    def post(self, url: str, **kwargs: Any) -> Any: ...


@dataclass
class LoadResult:
    """What a load did: counts and the first rejection's diagnostics (BSN-like numbers masked)."""

    children: int = 0
    resources: int = 0
    rejected: int = 0
    first_error: str | None = None
    statuses: dict[str, int] = field(default_factory=dict)


def _mask(text: str) -> str:
    return _NINE_DIGITS.sub("*********", text)


def _diagnostics(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return _mask(f"HTTP {response.status_code}")
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        texts = [i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code", "")
                 for i in body.get("issue", [])]
        return _mask(f"HTTP {response.status_code}: " + "; ".join(t for t in texts if t))
    return _mask(f"HTTP {response.status_code}")


def _post(client: _Poster, base: str, bundle: dict) -> Any:
    return client.post(base.rstrip("/") or "/", json=bundle,
                       headers={"Content-Type": "application/fhir+json",
                                "Accept": "application/fhir+json"})


def post_bundles(client: _Poster, base: str, bundles: Iterable[dict],
                 on_bundle: Callable[[], None] | None = None, workers: int = 1) -> LoadResult:
    """POST each transaction Bundle to `base` (the FHIR base); count what came back.

    `client` is anything with an httpx-like `post` (an `httpx.Client`, or a test client); with
    `workers` > 1 it must be thread-safe (httpx.Client is), and Bundles are posted concurrently.
    """
    result = LoadResult()

    def record(response: Any) -> None:
        result.children += 1
        if response.status_code == 200:
            for entry in response.json().get("entry", []):
                status = str((entry.get("response") or {}).get("status", "")).split(" ")[0]
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status in ("200", "201"):
                    result.resources += 1
        else:
            result.rejected += 1
            if result.first_error is None:
                result.first_error = _diagnostics(response)
        if on_bundle:
            on_bundle()

    if workers <= 1:
        for bundle in bundles:
            record(_post(client, base, bundle))
        return result
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future] = deque()
        for bundle in bundles:
            pending.append(pool.submit(_post, client, base, bundle))
            if len(pending) >= 2 * workers:
                record(pending.popleft().result())
        while pending:
            record(pending.popleft().result())
    return result


def demo_data(
    children: Annotated[int, typer.Option(
        min=1, help="How many children (one Bundle each).")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same data.")] = 1,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", dir_okay=False,
        help="Write NDJSON (one transaction Bundle per line).")] = None,
    url: Annotated[str | None, typer.Option(
        help="Load into this FHIR server (its base, e.g. http://127.0.0.1:8080/fhir).")] = None,
    reference_date: Annotated[str, typer.Option(
        help="'Today' of the generated world (YYYY-MM-DD): nothing is dated after it.")
    ] = "2026-11-01",
    workers: Annotated[int, typer.Option(
        min=1, help="With --url: Bundles posted concurrently (match the server's workers).")] = 4,
    token: Annotated[str | None, typer.Option(
        envvar="EKD_TOKEN", show_default=False,
        help="With --url: access token to send (the one `ekd serve` prints, or `ekd token "
             "create --role system`).")] = None,
) -> None:
    """Generate realistic synthetic JGZ dossiers that conform to the jgz-* profiles.

    Per child: Patient (test-range BSN), parents, the national contact-moment schedule up to the
    child's age, growth, Van Wiechen milestones, RVP vaccinations, hearing and vision screening,
    consent or objection; organisations (thuiszorg 0-4 and GGD 4-18 per region) are shared.
    """
    from ekd.jgz import demo

    if out is None and url is None:
        raise typer.BadParameter("give --out FILE and/or --url FHIR-BASE")
    try:
        ref = dt.date.fromisoformat(reference_date)
    except ValueError as exc:
        raise typer.BadParameter(f"--reference-date: {exc}") from None
    if children > demo.MAX_CHILDREN:
        raise typer.BadParameter(f"--children: at most {demo.MAX_CHILDREN}")

    started = time.perf_counter()
    generated = 0
    result = LoadResult()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("children", total=children)

        def bundles() -> Iterable[dict]:
            nonlocal generated
            handle = out.open("w", encoding="utf-8") if out else None
            try:
                for bundle in demo.generate(children, seed, ref):
                    generated += len(bundle["entry"])
                    if handle:
                        handle.write(json.dumps(bundle, ensure_ascii=False,
                                                separators=(",", ":")))
                        handle.write("\n")
                    yield bundle
            finally:
                if handle:
                    handle.close()

        if url:
            import httpx

            headers = {"Authorization": f"Bearer {token}"} if token else {}
            with httpx.Client(timeout=300, headers=headers) as client:
                shared = post_bundles(client, url, [demo.shared_bundle()])
                if shared.rejected:
                    console.print(f"[red]organisations rejected:[/red] {shared.first_error}")
                    raise typer.Exit(1)
                result = post_bundles(client, url, bundles(), workers=workers,
                                      on_bundle=lambda: progress.advance(task))
        else:
            for _ in bundles():
                progress.advance(task)
    elapsed = max(time.perf_counter() - started, 1e-9)

    console.print(f"children: {children}, resources generated: {generated}"
                  + (f", written to {out}" if out else ""))
    if url:
        console.print(f"loaded: {result.children - result.rejected} bundles accepted, "
                      f"{result.rejected} rejected, {result.resources} resources created/matched")
        if result.first_error:
            console.print(f"[red]first rejection:[/red] {result.first_error}")
    console.print(f"{generated / elapsed:,.0f} resources/s ({elapsed:.1f} s)")
    if result.rejected:
        raise typer.Exit(1)
