"""Runtime configuration, read from `EKD_*` environment variables.

One frozen object is built at start-up and passed down explicitly, so tests can run several
differently-configured servers in one process.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace

DEFAULT_DATABASE_URL = "sqlite:///./ekd.db"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be a whole number, got {raw!r}") from exc


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from exc


def _env_mode(name: str) -> str:
    raw = (os.environ.get(name) or "development").lower()
    if raw not in ("development", "production"):
        raise SystemExit(f"{name} must be development or production, got {raw!r}")
    return raw


def _env_profiles(name: str) -> dict[str, tuple[str, ...]]:
    """`{"Patient": ["http://…/jgz-Patient"], …}` as JSON."""
    raw = os.environ.get(name)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
        return {str(t): tuple(str(u) for u in urls) for t, urls in value.items()}
    except (ValueError, AttributeError, TypeError) as exc:
        raise SystemExit(f'{name} must be JSON like {{"Patient": ["http://…"]}}') from exc


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: int = 8080
    #: Public base URL of the FHIR endpoint; derived from the request when empty.
    base_url: str = ""
    max_body_bytes: int = 16 * 1024 * 1024
    max_json_depth: int = 64
    max_bundle_entries: int = 10_000
    default_page_size: int = 50
    max_page_size: int = 1_000
    #: Largest ValueSet expansion returned at once (bigger ones: 422 too-costly).
    max_expansion: int = 10_000
    #: FHIR packages (.tgz or folders) whose conformance resources are loaded at start.
    packages: tuple[str, ...] = ()
    #: Every Patient, Encounter, Observation, … must meet the JGZ profile that fits it.
    jgz_enforce: bool = True
    #: Folder of Dutch growth reference tables: measurements beyond +-4 SDS for the child's age
    #: get a warning. Not shipped with ekd (licence); empty: no such warnings.
    growth_references: str = ""
    #: Resource type -> profile URLs every stored resource of that type must conform to.
    required_profiles: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: "development" (creates keys, a local organisation and client, prints a token) or
    #: "production" (refuses to start without signing keys and registered clients).
    mode: str = "development"
    #: Folder with ekd's token signing keys (private keys, PEM; newest signs, all verify).
    key_dir: str = "./ekd-keys"
    #: Lifetime of access tokens from /auth/token, seconds.
    token_lifetime: int = 300
    #: Server certificate and key for HTTPS; with `tls_client_ca`, clients may present an
    #: organisation certificate (mutual TLS) signed by that CA.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    #: Origins allowed by CORS (empty: CORS off).
    cors_origins: tuple[str, ...] = ()
    #: Requests per minute per client (token or certificate) and per address at /auth/token;
    #: 0 turns rate limiting off.
    rate_limit: int = 60_000
    #: Requests a client may send in one burst above its steady rate.
    rate_burst: int = 10_000
    #: Whether a read's audit record must reach the disk before the response (PostgreSQL
    #: synchronous commit). False: committed before the response, flushed moments later.
    audit_durable_reads: bool = True
    #: Dossier transfer (`ekd.transfer`): this organisation's certificate and key (UZI server
    #: certificate layout), the CA chain sent along, the root it trusts and the CRL it checks.
    #: Transfer is off unless cert, key, root, CRL and relay are all set.
    exchange_cert: str = ""
    exchange_key: str = ""
    exchange_chain: str = ""
    exchange_root: str = ""
    exchange_crl: str = ""
    #: The relay (`ekd exchange serve`): its URL and the URA its certificate must carry.
    exchange_relay: str = ""
    exchange_relay_ura: str = ""
    #: The directory's public key (PEM): entries are trusted only when it signed them. The
    #: entries come from the relay, or from `exchange_directory` (a folder) when that is set.
    exchange_directory_key: str = ""
    exchange_directory: str = ""
    #: Run the transfer worker (outbox, inbox, bulk runs) inside `ekd serve`.
    exchange_worker: bool = True
    #: Threads of that worker in each process: while one waits on the database or the relay,
    #: another works (the claims keep them off each other's items).
    exchange_threads: int = 2
    #: Seconds between the worker's polls when there is nothing to do.
    exchange_poll: float = 0.5
    #: Outbox retries: first delay and cap (seconds), and attempts before dead-letter.
    exchange_retry_base: float = 2.0
    exchange_retry_cap: float = 300.0
    exchange_max_attempts: int = 12
    #: How long (seconds) a worker holds the rows it took (outbox, inbox, bulk children) before
    #: another process may take them over: a killed worker's work waits this long.
    exchange_lease: int = 120
    #: A package created longer ago than this (seconds) is flagged as stale when it arrives.
    exchange_max_age: int = 7 * 24 * 3600

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        settings = cls(
            database_url=os.environ.get("EKD_DATABASE_URL") or DEFAULT_DATABASE_URL,
            host=os.environ.get("EKD_HOST") or "127.0.0.1",
            port=_env_int("EKD_PORT", 8080),
            base_url=os.environ.get("EKD_BASE_URL", "").rstrip("/"),
            max_body_bytes=_env_int("EKD_MAX_BODY_BYTES", 16 * 1024 * 1024),
            max_json_depth=_env_int("EKD_MAX_JSON_DEPTH", 64),
            max_bundle_entries=_env_int("EKD_MAX_BUNDLE_ENTRIES", 10_000),
            default_page_size=_env_int("EKD_DEFAULT_PAGE_SIZE", 50),
            max_page_size=_env_int("EKD_MAX_PAGE_SIZE", 1_000),
            max_expansion=_env_int("EKD_MAX_EXPANSION", 10_000),
            packages=tuple(p for p in os.environ.get("EKD_PACKAGES", "").split(os.pathsep) if p),
            required_profiles=_env_profiles("EKD_REQUIRED_PROFILES"),
            growth_references=os.environ.get("EKD_GROWTH_REFERENCES", ""),
            jgz_enforce=os.environ.get("EKD_JGZ_ENFORCE", "true").lower()
            not in ("0", "false", "no", "off"),
            mode=_env_mode("EKD_MODE"),
            key_dir=os.environ.get("EKD_KEY_DIR") or "./ekd-keys",
            token_lifetime=_env_int("EKD_TOKEN_LIFETIME", 300),
            tls_cert=os.environ.get("EKD_TLS_CERT", ""),
            tls_key=os.environ.get("EKD_TLS_KEY", ""),
            tls_client_ca=os.environ.get("EKD_TLS_CLIENT_CA", ""),
            cors_origins=tuple(o.strip() for o in os.environ.get("EKD_CORS_ORIGINS", "").split(",")
                               if o.strip()),
            rate_limit=_env_int("EKD_RATE_LIMIT", 60_000),
            rate_burst=_env_int("EKD_RATE_BURST", 10_000),
            audit_durable_reads=os.environ.get("EKD_AUDIT_DURABLE_READS", "true").lower()
            not in ("0", "false", "no", "off"),
            exchange_cert=os.environ.get("EKD_EXCHANGE_CERT", ""),
            exchange_key=os.environ.get("EKD_EXCHANGE_KEY", ""),
            exchange_chain=os.environ.get("EKD_EXCHANGE_CHAIN", ""),
            exchange_root=os.environ.get("EKD_EXCHANGE_ROOT", ""),
            exchange_crl=os.environ.get("EKD_EXCHANGE_CRL", ""),
            exchange_relay=os.environ.get("EKD_EXCHANGE_RELAY", "").rstrip("/"),
            exchange_relay_ura=os.environ.get("EKD_EXCHANGE_RELAY_URA", ""),
            exchange_directory_key=os.environ.get("EKD_EXCHANGE_DIRECTORY_KEY", ""),
            exchange_directory=os.environ.get("EKD_EXCHANGE_DIRECTORY", ""),
            exchange_worker=os.environ.get("EKD_EXCHANGE_WORKER", "true").lower()
            not in ("0", "false", "no", "off"),
            exchange_threads=_env_int("EKD_EXCHANGE_THREADS", 2),
            exchange_poll=_env_float("EKD_EXCHANGE_POLL", 0.5),
            exchange_retry_base=_env_float("EKD_EXCHANGE_RETRY_BASE", 2.0),
            exchange_retry_cap=_env_float("EKD_EXCHANGE_RETRY_CAP", 300.0),
            exchange_max_attempts=_env_int("EKD_EXCHANGE_MAX_ATTEMPTS", 12),
            exchange_max_age=_env_int("EKD_EXCHANGE_MAX_AGE", 7 * 24 * 3600),
            exchange_lease=_env_int("EKD_EXCHANGE_LEASE", 120),
        )
        clean = {k: v for k, v in overrides.items() if v is not None}
        return replace(settings, **clean) if clean else settings
