"""What a validation outcome depends on, as one short string: the *validation stamp*.

A resource version is immutable, and the validator is a function of the resource's content,
the definitions in the registry (profiles, value sets, code systems, implementation guides),
a few settings and the validator's own code. A version that passed validation under stamp S
therefore still passes while the stamp is S. The store keeps the stamp a version was validated
under (`resource_version.validated`); dossier transfer uses it to skip validating again what
was validated at write time under the same definitions (`ekd.transfer.sender.make_package`).
Any change of a definition, of those settings or of the code gives a new stamp, and every
stored version is then validated again before it leaves.

The stamp is stable across processes and restarts: it hashes contents, never object identity
or load order (except where load order decides which resource answers a version-less
canonical, which is hashed too).
"""

from __future__ import annotations

import hashlib
import threading
from functools import lru_cache
from pathlib import Path

import orjson

from ekd.definitions.registry import Registry

#: Packages whose code decides validation outcomes (the JGZ profile selector included).
_CODE = ("validation", "fhirpath", "terminology", "definitions", "jgz", "fhir")

#: Content hashes of registry resources, by identity. The resource is kept with its hash so
#: that an id() cannot be reused while the entry lives; the R4 base definitions are shared by
#: every registry of the process and are hashed once.
_HASHES: dict[int, tuple[dict, bytes]] = {}
_HASHES_LOCK = threading.Lock()
_MAX_HASHES = 50_000


@lru_cache(maxsize=1)
def code_digest() -> bytes:
    """The source of the modules validation runs, read once per process."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for package in _CODE:
        for path in sorted((root / package).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.digest()


def _content_hash(resource: dict) -> bytes:
    key = id(resource)
    with _HASHES_LOCK:
        found = _HASHES.get(key)
    if found is not None and found[0] is resource:
        return found[1]
    digest = hashlib.sha256(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)).digest()
    with _HASHES_LOCK:
        if len(_HASHES) > _MAX_HASHES:  # replaced definitions must not pile up for ever
            _HASHES.clear()
        _HASHES[key] = (resource, digest)
    return digest


def registry_digest(registry: Registry) -> bytes:
    """Every definition's content, and per canonical url which one answers without a version."""
    entries = []
    for url, versions in registry.snapshot().items():
        winner = versions.get(None)
        named = sorted(_content_hash(r) for k, r in versions.items() if k is not None)
        entries.append(url.encode() + b"\0" + (_content_hash(winner) if winner else b"")
                       + b"".join(named))
    h = hashlib.sha256()
    for entry in sorted(entries):
        h.update(entry)
    return h.digest()


class ValidationStamp:
    """The current stamp of one server's validator; recomputed after a definition changed."""

    def __init__(self, registry: Registry, settings: object) -> None:
        self.registry = registry
        self._settings = orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)
        self._lock = threading.Lock()
        self._value: str | None = None
        self._generation = 0
        registry.subscribe(self._changed)

    def _changed(self, resource: dict) -> None:
        with self._lock:
            self._value = None
            self._generation += 1

    def __call__(self) -> str:
        with self._lock:
            if self._value is not None:
                return self._value
            generation = self._generation
        h = hashlib.sha256(code_digest())
        h.update(self._settings)
        h.update(registry_digest(self.registry))
        value = h.hexdigest()[:32]
        with self._lock:
            # A definition that changed while we hashed: this value may be stale; the next
            # call computes again.
            if generation == self._generation:
                self._value = value
        return value
