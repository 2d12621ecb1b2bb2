"""Starting, waiting for and stopping the servers under test, plus scratch databases.

Why subprocesses: every target (ekd, the sekmet-fhir peer, the bare FastAPI floor) is measured
the same way - a real server process on 127.0.0.1 driven over HTTP by the same client - so the
HTTP stack and JSON handling are part of every figure. Each server gets its own process group
so that stopping it also stops anything it forked, and only what we started is ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
PERF_DIR = Path(__file__).resolve().parent

SEKMET_VERSION = "0.1.1"


def log(msg: str) -> None:
    """Progress goes to stderr so that stdout carries only the results."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (racy in theory, fine in practice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A server subprocess with its output in a log file and a readiness probe."""

    def __init__(self, name: str, argv: Sequence[str], port: int, ready_url: str, log_path: Path,
                 env: dict[str, str] | None = None, cwd: Path | None = None,
                 verify: ssl.SSLContext | bool = True) -> None:
        """`verify`: how the readiness probe checks an HTTPS server's certificate."""
        self.name = name
        self.verify = verify
        self.argv = list(argv)
        self.port = port
        self.ready_url = ready_url
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: object | None = None

    def start(self, timeout_s: float = 90.0) -> None:
        """Start and block until ``ready_url`` answers 200, or raise with the log's tail."""
        log(f"starting {self.name}: {' '.join(self.argv)}")
        # Output to a file, not a pipe: a pipe nobody reads fills up and stalls the server.
        fh = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log_file = fh
        self.proc = subprocess.Popen(
            self.argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env, cwd=self.cwd, start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode} before it "
                                   f"was ready:\n{self.log_tail()}")
            try:
                r = httpx.get(self.ready_url, timeout=2.0, verify=self.verify)
                if r.status_code == 200:
                    log(f"{self.name} ready on port {self.port} "
                        f"({timeout_s - (deadline - time.monotonic()):.1f}s)")
                    return
                last_error = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                last_error = repr(exc)
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f}s ({last_error}):\n"
                           f"{self.log_tail()}")

    def token(self) -> str:
        """The development token `ekd serve` printed (a `TOKEN=` line of its log)."""
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("TOKEN="):
                return line[len("TOKEN="):].strip()
        raise RuntimeError(f"{self.name} printed no token:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it if it lingers. Safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
            log(f"stopped {self.name}")
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None


@contextlib.contextmanager
def running(server: ServerProcess, timeout_s: float = 90.0) -> Iterator[ServerProcess]:
    """Start ``server`` and always stop it, whatever happens in the block."""
    try:
        server.start(timeout_s)
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- ekd


def ekd_command() -> list[str]:
    """The ``ekd`` console script of this interpreter's environment.

    Falls back to calling the Typer app through this interpreter when the script is not
    installed yet (``pip install -e .`` creates it), so a fresh checkout still works.
    """
    script = Path(sys.executable).parent / "ekd"
    if script.exists():
        return [str(script)]
    found = shutil.which("ekd")
    if found:
        return [found]
    return [sys.executable, "-c",
            "import sys; from ekd.cli.main import app; sys.argv[0] = 'ekd'; app()"]


def ekd_server(database_url: str, workdir: Path, label: str) -> ServerProcess:
    port = free_port()
    env = dict(os.environ)
    env["EKD_DATABASE_URL"] = database_url  # belt and braces next to --database-url
    # The workload is generic FHIR, not JGZ-profiled dossiers: measure the server core.
    env["EKD_JGZ_ENFORCE"] = "false"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    # Development mode with its keys in the work folder; the printed token is a machine
    # client's (role `system`), allowed everything within its organisation.
    env["EKD_KEY_DIR"] = str(workdir / f"{label}-keys")
    env.pop("EKD_MODE", None)
    argv = [*ekd_command(), "serve", "--host", HOST, "--port", str(port),
            "--database-url", database_url, "--dev-role", "system"]
    return ServerProcess(label, argv, port, f"http://{HOST}:{port}/fhir/metadata",
                         workdir / f"{label}.log", env=env, cwd=workdir)


# --------------------------------------------------------------------------- sekmet-fhir


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ekd-bench"


def ensure_sekmet_venv(venv: Path) -> Path:
    """Create the peer's own virtualenv on first use and return its ``sekmet`` script.

    Why a separate venv outside the repo: sekmet-fhir pins its own dependency set
    (uvicorn[standard], fhirpathpy, ...) that must not leak into ekd's environment, and the
    download should happen once per machine, not once per run.
    """
    py = venv / "bin" / "python"
    script = venv / "bin" / "sekmet"
    if py.exists() and script.exists():
        probe = subprocess.run(
            [str(py), "-c", "import importlib.metadata as m; print(m.version('sekmet-fhir'))"],
            capture_output=True, text=True, check=False)
        if probe.returncode == 0 and probe.stdout.strip() == SEKMET_VERSION:
            return script
    log(f"creating sekmet-fhir {SEKMET_VERSION} virtualenv in {venv} (one-off)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    f"sekmet-fhir=={SEKMET_VERSION}"], check=True, stdout=sys.stderr)
    if not script.exists():
        raise RuntimeError(f"sekmet-fhir installed but {script} is missing")
    return script


def sekmet_server(script: Path, workdir: Path, log_inbound: bool) -> ServerProcess:
    """``sekmet serve`` with a settings.yaml that keeps everything inside ``workdir``.

    How sekmet-fhir is configured (read from its source, sekmet/config.py and cli.py):
    - settings come from ``--config settings.yaml``; ``data_dir``/``db_path`` put its SQLite
      file (default ./data/sekmet.db) in our temp dir, and the process runs with cwd there;
    - ``base_url`` must carry the real port: it is used for Location headers;
    - ``server_auth.types: [none]`` is its default (no auth) - stated explicitly;
    - ``log_inbound`` (default true) records every request *and* response body in a SQLite
      traffic table, which the config documents as "off for heavy load runs". We switch it
      off by default so that the figures measure its FHIR store rather than its test-harness
      logging; ``--sekmet-log-inbound`` keeps its out-of-the-box behaviour.
    - the workflow simulator stays at its default; it only reacts to ServiceRequest, Task,
      Appointment, MedicationRequest and Claim, none of which the workload writes.
    """
    port = free_port()
    data = workdir / "sekmet-data"
    data.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "sekmet-settings.yaml"
    cfg.write_text(
        f"base_url: http://{HOST}:{port}/fhir\n"
        f"host: {HOST}\n"
        f"port: {port}\n"
        f"data_dir: {data}\n"
        f"db_path: {data / 'sekmet.db'}\n"
        f"log_inbound: {'true' if log_inbound else 'false'}\n"
        "server_auth:\n  types: [none]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEKMET_")}
    argv = [str(script), "serve", "--config", str(cfg), "--host", HOST, "--port", str(port)]
    return ServerProcess("sekmet", argv, port, f"http://{HOST}:{port}/fhir/metadata",
                         workdir / "sekmet.log", env=env, cwd=workdir)


# --------------------------------------------------------------------------- floor B


def floor_b_server(workdir: Path, body_file: Path) -> ServerProcess:
    """The bare FastAPI app in ``_floor_b_app.py``, under the same uvicorn as ekd.

    No access log, as ``ekd serve`` runs (uvicorn ``access_log=False``).
    """
    port = free_port()
    env = dict(os.environ)
    env["BENCH_FLOOR_BODY_FILE"] = str(body_file)
    argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(PERF_DIR), "_floor_b_app:app",
            "--host", HOST, "--port", str(port), "--no-access-log"]
    return ServerProcess("floor-b", argv, port, f"http://{HOST}:{port}/fhir/metadata",
                         workdir / "floor-b.log", env=env, cwd=workdir)


# --------------------------------------------------------------------------- PostgreSQL


class ScratchDatabase:
    """A throw-away PostgreSQL database ``ekd_bench_<random>``, dropped on exit."""

    def __init__(self, admin_dsn: str, purpose: str) -> None:
        self.admin_dsn = admin_dsn
        self.name = f"ekd_bench_{purpose}_{secrets.token_hex(4)}"

    def __enter__(self) -> ScratchDatabase:
        import psycopg

        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        log(f"created scratch database {self.name}")
        return self

    def __exit__(self, *exc: object) -> None:
        import psycopg

        try:
            with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            log(f"dropped scratch database {self.name}")
        except psycopg.Error as e:  # never mask the real error; say what is left behind
            log(f"WARNING: could not drop scratch database {self.name}: {e}")

    def sqlalchemy_url(self, user_host: str) -> str:
        return f"postgresql+psycopg://{user_host}/{self.name}"


def postgres_available(admin_dsn: str) -> str | None:
    """None when PostgreSQL answers, else the reason it does not."""
    try:
        import psycopg

        with psycopg.connect(admin_dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as e:
        return f"PostgreSQL not reachable ({type(e).__name__}: {str(e).strip()[:120]})"
