"""Index rows extracted from a resource when it is written.

For now the token index covers `identifier` on every resource type that has one, which is what
conditional create/update/delete and conditional references need. Search-parameter-driven
extraction (FHIRPath expressions of SearchParameter resources) replaces this function.
"""

from __future__ import annotations

from collections.abc import Iterator


def token_rows(content: dict) -> Iterator[tuple[str, str | None, str | None]]:
    identifiers = content.get("identifier")
    if isinstance(identifiers, dict):
        identifiers = [identifiers]
    if not isinstance(identifiers, list):
        return
    for ident in identifiers:
        if isinstance(ident, dict) and (ident.get("value") or ident.get("system")):
            yield "identifier", ident.get("system"), ident.get("value")
