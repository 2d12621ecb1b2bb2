"""Snapshot generation: a profile's full element list from its differential and its base.

Most profiles in the wild (and all test profiles of the HL7 validator suite) are published with
a differential only. The snapshot is the base's snapshot (recursively generated when the base is
itself a differential-only profile) with every differential element merged into the element it
constrains. A differential may dive into a data type the base does not spell out
(`Observation.code.coding.system`): the type's own snapshot (or the type profile's) is then
grafted under that element first. Slices are copies of the element they slice.

Elements are addressed by `ElementDefinition.id` (`Observation.component:SystolicBP.code`); ids
are made from paths and slice names where a definition has none (older profiles). Errors in the
differential raise `SnapshotError` with the message the Java validator would give; they are
reported when the StructureDefinition itself is validated, and make a profile unusable.

Results are cached per StructureDefinition object and dropped whenever the registry changes.
"""

from __future__ import annotations

import copy
import re
import threading
from dataclasses import dataclass, field

from ekd.definitions.registry import Registry

#: StructureDefinition canonical prefix of the base types.
BASE = "http://hl7.org/fhir/StructureDefinition/"

_SEGMENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\[x\])?$")


class SnapshotError(ValueError):
    """A differential that cannot be applied to its base."""

    def __init__(self, message: str, element: int | None = None) -> None:
        super().__init__(message)
        #: Index into `differential.element` of the element at fault, when known.
        self.element = element


@dataclass(eq=False, slots=True)
class Node:
    """One element of a snapshot tree: children by name (in order), slices of this element."""

    element: dict
    children: list[Node] = field(default_factory=list)
    slices: list[Node] = field(default_factory=list)
    #: The element as it was before this profile's differential touched it; new slices copy it.
    pristine: dict | None = None

    @property
    def name(self) -> str:
        return self.element["path"].rsplit(".", 1)[-1]

    def child(self, name: str) -> Node | None:
        for c in self.children:
            if c.name == name:
                return c
        return None

    def slice(self, name: str) -> Node | None:
        for s in self.slices:
            if s.element.get("sliceName") == name or _last_slice(s.element) == name:
                return s
        return None

    def walk(self) -> list[dict]:
        """Elements in snapshot order: element, its children, then its slices."""
        out = [self.element]
        for c in self.children:
            out.extend(c.walk())
        for s in self.slices:
            out.extend(s.walk())
        return out


def _last_slice(element: dict) -> str | None:
    last = element.get("id", "").rsplit(".", 1)[-1]
    return last.partition(":")[2] or None


def split_id(element_id: str) -> list[tuple[str, str | None]]:
    """`Observation.component:bp.code` -> [(Observation, None), (component, bp), (code, None)]."""
    parts = []
    for seg in element_id.split("."):
        name, _, sl = seg.partition(":")
        parts.append((name, sl or None))
    return parts


def assign_ids(elements: list[dict]) -> list[dict]:
    """Give every element an id (from path and slice names) where it has none.

    Elements without ids belong to the slice most recently opened on their path prefix, which
    is how slicing was written before ids existed.
    """
    if all("id" in e for e in elements):
        return elements
    current: dict[str, str] = {}  # path -> slice name now open on it
    out = []
    for e in elements:
        path = e.get("path", "")
        if "sliceName" in e:
            current[path] = e["sliceName"]
            for p in [p for p in current if p.startswith(path + ".")]:
                del current[p]
        elif path in current and "id" not in e:
            del current[path]
            for p in [p for p in current if p.startswith(path + ".")]:
                del current[p]
        if "id" not in e:
            segs = path.split(".")
            parts = []
            for i, seg in enumerate(segs):
                prefix = ".".join(segs[: i + 1])
                parts.append(f"{seg}:{current[prefix]}" if prefix in current else seg)
            e = {**e, "id": ".".join(parts)}
        out.append(e)
    return out


def build_tree(elements: list[dict]) -> Node:
    """A snapshot element list as a tree (ids as the structure)."""
    elements = assign_ids(elements)
    if not elements:
        raise SnapshotError("The snapshot has no elements")
    root = Node(elements[0])
    by_id: dict[str, Node] = {elements[0]["id"]: root}
    for e in elements[1:]:
        eid = e["id"]
        parent_id, _, last = eid.rpartition(".")
        name, _, sl = last.partition(":")
        node = Node(e)
        if sl:
            base_slice, slash, _ = sl.rpartition("/")
            owner_id = f"{parent_id}.{name}" + (f":{base_slice}" if slash else "")
            owner = by_id.get(owner_id)
            if owner is None:
                raise SnapshotError(f"Slice '{eid}' has no sliced element '{owner_id}'")
            owner.slices.append(node)
        else:
            parent = by_id.get(parent_id)
            if parent is None:
                raise SnapshotError(f"Element '{eid}' has no parent '{parent_id}'")
            parent.children.append(node)
        by_id[eid] = node
    return root


class SnapshotGenerator:
    """Snapshots for StructureDefinitions, generated where missing, cached, thread-safe."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._lock = threading.RLock()
        self._cache: dict[int, tuple[dict, list[dict]]] = {}
        self._building: set[int] = set()
        registry.subscribe(self._changed)

    def _changed(self, resource: dict) -> None:
        if resource.get("resourceType") == "StructureDefinition":
            with self._lock:
                self._cache.clear()

    def elements(self, sd: dict) -> list[dict]:
        """The snapshot elements of `sd` (its own snapshot, or generated from the differential)."""
        snap = (sd.get("snapshot") or {}).get("element")
        if snap:
            return assign_ids(snap)
        key = id(sd)
        # Generation holds the (re-entrant) lock: it is rare, recursive for derived profiles,
        # and `_building` (cycle detection) must only see this thread's chain of bases.
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] is sd:
                return hit[1]
            if key in self._building:
                raise SnapshotError(
                    f"Circular definition: {sd.get('url')} is (indirectly) its own base")
            self._building.add(key)
            try:
                result = self._generate(sd)
            finally:
                self._building.discard(key)
            self._cache[key] = (sd, result)
            return result

    # -- generation ----------------------------------------------------------------------------

    def _generate(self, sd: dict) -> list[dict]:
        base_url = sd.get("baseDefinition")
        if not base_url:
            raise SnapshotError(f"{sd.get('url')} has neither a snapshot nor a baseDefinition")
        if base_url == sd.get("url"):
            raise SnapshotError(f"Circular definition: {sd.get('url')} is its own base")
        base = self.registry.get(base_url, "StructureDefinition")
        if base is None:
            raise SnapshotError(f"Unable to find base definition {base_url} for {sd.get('url')}")
        base_elements = self.elements(base)
        root = build_tree(copy.deepcopy(base_elements))
        for node in _all_nodes(root):
            node.pristine = node.element
            node.element = dict(node.element)
        diff = (sd.get("differential") or {}).get("element") or []
        _Applier(self, root, sd).apply(assign_ids(diff))
        return root.walk()


def _all_nodes(node: Node) -> list[Node]:
    """The node and everything below it, children before slices, in document order."""
    out = [node]
    for c in node.children:
        out.extend(_all_nodes(c))
    for s in node.slices:
        out.extend(_all_nodes(s))
    return out


class _Applier:
    """Merges one differential into a copy of its base's snapshot tree."""

    def __init__(self, gen: SnapshotGenerator, root: Node, sd: dict) -> None:
        self.gen = gen
        self.root = root
        self.sd = sd
        self.url = sd.get("url", "?")
        self.order: list[int] = []

    def apply(self, diff: list[dict]) -> None:
        if any(d.get("id") and d.get("path") and
               ".".join(n for n, _ in split_id(d["id"])) != d["path"] for d in diff):
            # Ids that contradict their paths: the path is what counts (as for the Java
            # snapshot generator); ids are made afresh from paths and slice names.
            diff = assign_ids([{k: v for k, v in d.items() if k != "id"} for d in diff])
        last: tuple = ()
        for i, d in enumerate(diff):
            eid = d.get("id") or d.get("path") or ""
            path = d.get("path", "")
            if not eid or any(not seg.split(":")[0] for seg in eid.split(".")) or ".." in path:
                raise SnapshotError(
                    f"Invalid path '{path}' in differential in {self.url}: name portion "
                    "missing ('..')", i)
            node, position = self._resolve(eid, i)
            if position < last:
                raise SnapshotError(
                    f"No match found for {eid} in the generated snapshot: check that the path "
                    "and definitions are legal in the differential (including order)", i)
            last = position
            self._merge(node, d, i)

    # -- finding (and creating) the element a differential element constrains ----------------

    def _resolve(self, eid: str, index: int) -> tuple[Node, tuple]:
        parts = split_id(eid)
        root_name = self.root.element["path"].split(".")[0]
        if parts[0][0] != root_name:
            raise SnapshotError(
                f"Differential element {eid} does not start with the type {root_name}", index)
        node = self.root
        position: list[int] = []
        for name, sl in parts[1:]:
            child = self._child(node, name, index)
            position.append(node.children.index(child))
            node = child
            if sl:
                for level, piece in enumerate(sl.split("/")):
                    found = node.slice(piece)
                    if found is None:
                        found = self._new_slice(node, piece, sl.split("/")[: level + 1])
                    position.append(1000 + node.slices.index(found))
                    node = found
        return node, tuple(position)

    def _child(self, node: Node, name: str, index: int) -> Node:
        if not _SEGMENT.match(name):
            raise SnapshotError(f"Invalid element name '{name}' in {self.url}", index)
        if not node.children:
            self._expand(node, index, name)
        found = node.child(name)
        if found is not None:
            return found
        # A type-specific name for a choice (`valueQuantity` for `value[x]`) constrains the
        # choice element to that one type.
        for c in node.children:
            if c.name.endswith("[x]") and name.startswith(c.name[:-3]):
                suffix = name[len(c.name) - 3:]
                codes = [t.get("code") for t in c.element.get("type", [])]
                match = [t for t in c.element.get("type", []) if _type_suffix(t) == suffix]
                if not match:
                    raise SnapshotError(
                        f"The path must be '{c.element['path']}' not "
                        f"'{c.element['path'][:-len(c.name)]}{name}' when the type list is not "
                        f"constrained (allowed types: {', '.join(map(str, codes))})", index)
                c.element["type"] = match
                return c
        raise SnapshotError(
            f"No match found for {node.element['id']}.{name} in the generated snapshot: check "
            "that the path and definitions are legal in the differential (including order)",
            index)

    def _new_slice(self, sliced: Node, name: str, chain: list[str]) -> Node:
        source = sliced.pristine or sliced.element
        element = copy.deepcopy(source)
        element.pop("slicing", None)
        base_id = sliced.element["id"]
        resliced = ":" in base_id.rsplit(".", 1)[-1]
        element["sliceName"] = "/".join(chain)
        element["id"] = f"{base_id}/{name}" if resliced else f"{base_id}:{name}"
        node = Node(element, pristine=copy.deepcopy(element))
        # The slice's subtree starts as a copy of the sliced element's base children.
        for c in sliced.children:
            node.children.append(_copy_under(c, base_id, element["id"]))
        sliced.slices.append(node)
        return node

    def _expand(self, node: Node, index: int, want: str | None = None) -> None:
        """Graft the children of the element's type (or type profile) under it.

        For a choice of several types, the children are those of the one type that has the
        child the differential names (`Observation.value[x].value`: Quantity), or Element's.
        """
        element = node.element
        ref = element.get("contentReference")
        if ref:
            target_id = ref.partition("#")[2]
            target = _find(self.root, target_id)
            if target is None:
                raise SnapshotError(f"Unable to resolve contentReference {ref}", index)
            if not target.children:
                self._expand(target, index)
            # The referenced element as its base defines it: this profile's constraints on
            # it (and its slices) do not apply to the recursive occurrence.
            for c in target.children:
                node.children.append(_copy_under(_pristine(c), target.element["id"],
                                                 element["id"], target.element["path"],
                                                 element["path"]))
            return
        types = element.get("type") or []
        codes = {t.get("code") for t in types}
        if len(codes) != 1:
            source = self.gen.registry.structure_definition("Element")
            profile = None
            if want not in (None, "id", "extension"):
                ordered = [str(t.get("code")) for t in types]
                having = [c for c in ordered if c[:1].isupper() and
                          _has_child(self.gen.registry, c, str(want))]
                if len(having) >= 1:
                    source = self.gen.registry.structure_definition(having[0])
        else:
            t = types[0]
            profile = (t.get("profile") or [None])[0]
            source = None
            if profile:
                source = self.gen.registry.get(profile, "StructureDefinition")
            if source is None:
                source = self.gen.registry.structure_definition(str(t.get("code")))
        if source is None:
            raise SnapshotError(
                f"Unable to find the definition of the type of {element['id']}", index)
        elements = self.gen.elements(source)
        sub = build_tree(copy.deepcopy(elements))
        src_id, src_path = sub.element["id"], sub.element["path"]
        for c in sub.children:
            grafted = _copy_under(c, src_id, element["id"], src_path, element["path"])
            for n in _all_nodes(grafted):
                n.pristine = copy.deepcopy(n.element)
            node.children.append(grafted)

    # -- merging ---------------------------------------------------------------------------

    def _merge(self, node: Node, diff: dict, index: int) -> None:
        target = node.element
        for key, value in diff.items():
            if key in ("id", "path", "base"):
                continue
            if key == "constraint":
                existing = {c.get("key"): i for i, c in enumerate(target.get("constraint", []))}
                merged = list(target.get("constraint", []))
                for c in value:
                    if c.get("key") in existing:
                        merged[existing[c.get("key")]] = c
                    else:
                        merged.append(c)
                target["constraint"] = merged
            elif key in ("mapping", "condition", "example", "alias"):
                merged = list(target.get(key, []))
                merged += [v for v in value if v not in merged]
                target[key] = merged
            elif key in ("binding", "slicing") and isinstance(value, dict):
                target[key] = {**target.get(key, {}), **value}
            elif key.startswith(("fixed", "pattern")):
                for k in [k for k in target if k.startswith(("fixed", "pattern"))]:
                    if k.startswith("fixed") and key.startswith("fixed") and target[k] != value:
                        raise SnapshotError(
                            f"{target['id']}: the fixed value in {self.url} conflicts with the "
                            "fixed value of the base definition, because the value must match "
                            "the fixed value defined in the base", index)
                    del target[k]
                target[key] = value
            elif key == "type":
                target["type"] = self._types(target, value, index)
            else:
                target[key] = value

    def _types(self, target: dict, new: list[dict], index: int) -> list[dict]:
        allowed = {t.get("code") for t in target.get("type", [])}
        for t in new:
            code = t.get("code")
            if allowed and code not in allowed and not _is_specialisation(code, allowed,
                                                                          self.gen.registry):
                raise SnapshotError(
                    f"{target['id']}: type {code} is not allowed by the base definition "
                    f"(allowed: {', '.join(sorted(map(str, allowed)))})", index)
        return new


def _is_specialisation(code: object, allowed: set, registry: Registry) -> bool:
    """A profile may name a type the base allows as an ancestor (Resource -> Patient)."""
    if not isinstance(code, str):
        return False
    sd = registry.structure_definition(code)
    seen = 0
    while sd is not None and seen < 10:
        base = sd.get("baseDefinition", "")
        name = base.rsplit("/", 1)[-1]
        if name in allowed or base in allowed:
            return True
        sd = registry.get(base, "StructureDefinition") if base else None
        seen += 1
    return False


def _has_child(registry: Registry, type_code: str, name: str) -> bool:
    sd = registry.structure_definition(type_code)
    if sd is None:
        return False
    prefix = f"{sd.get('type', type_code)}.{name}"
    return any(e.get("path") in (prefix, prefix + "[x]")
               for e in (sd.get("snapshot") or {}).get("element", []))


def _type_suffix(t: dict) -> str:
    code = str(t.get("code", ""))
    return code[0].upper() + code[1:] if code else ""


def _find(root: Node, element_id: str) -> Node | None:
    for n in _all_nodes(root):
        if n.element.get("id") == element_id:
            return n
    return None


def _pristine(node: Node) -> Node:
    """A subtree as it was before the differential (slices dropped)."""
    return Node(dict(node.pristine or node.element), [_pristine(c) for c in node.children],
                [], node.pristine)


def _rebase(value: str, old: str, new: str) -> str:
    if value == old or value.startswith((old + ".", old + ":")):
        return new + value[len(old):]
    return value


def _copy_under(node: Node, old_id: str, new_id: str, old_path: str | None = None,
                new_path: str | None = None) -> Node:
    """A deep copy of a subtree, re-rooted from `old_id` to `new_id` (and path likewise)."""
    element = copy.deepcopy(node.element)
    element["id"] = _rebase(element.get("id", ""), old_id, new_id)
    if old_path is not None and new_path is not None:
        element["path"] = _rebase(element.get("path", ""), old_path, new_path)
    pristine = copy.deepcopy(node.pristine or node.element)
    pristine["id"], pristine["path"] = element["id"], element["path"]
    copied = Node(element, pristine=pristine)
    copied.children = [_copy_under(c, old_id, new_id, old_path, new_path) for c in node.children]
    copied.slices = [_copy_under(s, old_id, new_id, old_path, new_path) for s in node.slices]
    return copied
