"""Running a parsed search against the store's tables."""

from __future__ import annotations

from sqlalchemy import Connection, and_, func, or_, select
from sqlalchemy.sql.elements import ColumnElement

from ekd.search.params import SearchQuery, Token
from ekd.store.schema import resource, search_token


def _token_clause(param: str, token: Token) -> ColumnElement[bool]:
    if param == "_id":
        return resource.c.id == token.code
    conds = [search_token.c.param == param]
    if token.code is not None:
        conds.append(search_token.c.code == token.code)
    if token.no_system:
        conds.append(search_token.c.system.is_(None))
    elif token.system is not None:
        conds.append(search_token.c.system == token.system)
    return and_(*conds)


def _where(query: SearchQuery) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = [
        resource.c.type == query.type,
        resource.c.deleted.is_(False),
    ]
    for param, alternatives in query.tokens:
        if param == "_id":
            clauses.append(or_(*(_token_clause(param, t) for t in alternatives)))
            continue
        sub = select(search_token.c.resource_pk).where(
            search_token.c.type == query.type,
            or_(*(_token_clause(param, t) for t in alternatives)),
        )
        clauses.append(resource.c.pk.in_(sub))
    return clauses


def matching_pks(
    conn: Connection, query: SearchQuery, *, limit: int | None, offset: int = 0
) -> list[int]:
    q = select(resource.c.pk).where(*_where(query)).order_by(resource.c.pk)
    if limit is not None:
        q = q.limit(limit)
    if offset:
        q = q.offset(offset)
    return list(conn.execute(q).scalars())


def count(conn: Connection, query: SearchQuery) -> int:
    return int(conn.execute(select(func.count()).where(*_where(query))).scalar_one())
