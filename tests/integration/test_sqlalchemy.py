"""SQLAlchemy 2 ORM through the pooler in transaction mode, with a pool of 2 servers.

The drivers keep their prepared-statement caches on (asyncpg's statement cache, psycopg's
automatic preparation), so the statements of many clients move between the two servers.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from poolcase import pg_now, pooler_backends, start
from sqlalchemy import ForeignKey, String, create_engine, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)

from support import PgCluster, PoolerFactory, PoolerProc

WORKERS = 6
ROUNDS = 2


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "sa_authors"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    books: Mapped[list[Book]] = relationship(back_populates="author",
                                             cascade="all, delete-orphan")


class Book(Base):
    __tablename__ = "sa_books"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50), unique=True)
    pages: Mapped[int]
    author_id: Mapped[int] = mapped_column(ForeignKey("sa_authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")


def _name(n: int, r: int) -> str:
    return f"w{n}r{r}"


def _new_author(name: str) -> Author:
    return Author(name=name, books=[Book(title=f"{name}-{i}", pages=100 * i)
                                    for i in range(1, 6)])


def _long_books(name: str) -> Any:
    """Titles of the author's books of 300 pages or more: a filter across a join."""
    return (select(Book.title).join(Book.author)
            .where(Author.name == name, Book.pages >= 300).order_by(Book.title))


def _count_books(author_id: int) -> Any:
    return select(func.count()).select_from(Book).where(Book.author_id == author_id)


def _final_rows(name: str) -> list[tuple[str, int]]:
    """What each workload leaves: -1 updated twice, -2 once, -5 deleted, no stray rows."""
    return [(f"{name}-1", 1101), (f"{name}-2", 1200), (f"{name}-3", 300), (f"{name}-4", 400)]


def _pages_of(name: str) -> Any:
    return (select(Book.title, Book.pages).join(Book.author)
            .where(Author.name == name).order_by(Book.title))


def _check_totals(pg: PgCluster, since: str) -> None:
    authors = WORKERS * ROUNDS
    assert pg.sql("select count(*) from sa_authors") == str(authors)
    assert pg.sql("select count(*) from sa_books") == str(4 * authors)
    assert pg.sql("select sum(pages) from sa_books") == str((1101 + 1200 + 300 + 400) * authors)
    assert pooler_backends(pg, since) <= 2


def _start(pg: PgCluster, pooler: PoolerFactory) -> tuple[PoolerProc, str]:
    pg.sql("drop table if exists sa_books, sa_authors")
    since = pg_now(pg)
    return start(pooler, "transaction", pool_size=2, admin_users="postgres"), since


def _server_statements(proc: PoolerProc) -> list[int]:
    """SHOW SERVERS' prepared_statements of app's server connections."""
    with psycopg.connect(proc.dsn("postgres", dbname="pgbouncer"), autocommit=True) as admin:
        cur = admin.execute("SHOW SERVERS")
        assert cur.description is not None
        names = [d.name for d in cur.description]
        rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    return [r["prepared_statements"] for r in rows if r["database"] == "app"]


# ---------------------------------------------------------------------- psycopg (sync)


def _sync_workload(engine: Engine, name: str) -> None:
    with Session(engine) as s:
        with s.begin():
            s.add(_new_author(name))
        # Repeated, so psycopg's automatic preparation (after 5 runs) kicks in.
        for _ in range(8):
            assert s.scalars(_long_books(name)).all() == [f"{name}-3", f"{name}-4", f"{name}-5"]
        s.commit()

        author = s.scalars(select(Author).options(selectinload(Author.books))
                           .where(Author.name == name)).one()
        assert sorted(b.pages for b in author.books) == [100, 200, 300, 400, 500]
        author_id = author.id
        first = next(b for b in author.books if b.title == f"{name}-1")
        first.pages += 1
        s.commit()
        assert s.scalar(select(Book.pages).where(Book.title == f"{name}-1")) == 101

        s.execute(update(Book).where(Book.author_id == author_id, Book.pages < 300)
                  .values(pages=Book.pages + 1000))
        s.commit()

        fifth = s.scalars(select(Book).where(Book.title == f"{name}-5")).one()
        s.delete(fifth)
        s.commit()
        assert s.scalar(_count_books(author_id)) == 4

        # Rolled back: the flushed row is seen inside the transaction only.
        s.add(Book(title=f"{name}-tmp", pages=1, author_id=author_id))
        s.flush()
        assert s.scalar(_count_books(author_id)) == 5
        s.rollback()
        assert s.scalar(_count_books(author_id)) == 4

        # A failed statement: the transaction is rolled back and the session goes on.
        s.add(Book(title=f"{name}-1", pages=7, author_id=author_id))
        with pytest.raises(IntegrityError):
            s.flush()
        s.rollback()
        assert [tuple(r) for r in s.execute(_pages_of(name))] == _final_rows(name)
        assert s.scalars(_long_books(name)).all() == [f"{name}-1", f"{name}-2",
                                                      f"{name}-3", f"{name}-4"]


@pytest.mark.parametrize("prepare_threshold", [None, 0], ids=["default", "always"])
def test_psycopg_orm_workload(pg: PgCluster, pooler: PoolerFactory,
                              prepare_threshold: int | None) -> None:
    proc, since = _start(pg, pooler)
    connect_args = {} if prepare_threshold is None else {"prepare_threshold": prepare_threshold}
    engine = create_engine(f"postgresql+psycopg://postgres@{proc.host}:{proc.port}/app",
                           pool_size=WORKERS, connect_args=connect_args)
    try:
        Base.metadata.create_all(engine)
        names = [_name(n, r) for r in range(ROUNDS) for n in range(WORKERS)]
        with ThreadPoolExecutor(WORKERS) as workers:
            list(workers.map(lambda name: _sync_workload(engine, name), names))
        with Session(engine) as s:
            assert s.scalar(select(func.count()).select_from(Author)) == len(names)
            for _ in range(6):  # past psycopg's default prepare_threshold (5)
                joined = s.execute(select(Author.name, func.count(Book.id)).join(Author.books)
                                   .group_by(Author.name).order_by(Author.name)).all()
                assert [tuple(r) for r in joined] == [(name, 4) for name in sorted(names)]
            # Checked inside the session's transaction: on rollback (the session's end)
            # psycopg clears its statements with DEALLOCATE ALL.
            statements = _server_statements(proc)
            assert 1 <= len(statements) <= 2 and sum(statements) > 0
    finally:
        engine.dispose()
    _check_totals(pg, since)


# ---------------------------------------------------------------------- asyncpg (async)


async def _async_workload(engine: AsyncEngine, name: str) -> None:
    async with AsyncSession(engine, expire_on_commit=False) as s:
        async with s.begin():
            s.add(_new_author(name))
        for _ in range(8):
            titles = (await s.scalars(_long_books(name))).all()
            assert titles == [f"{name}-3", f"{name}-4", f"{name}-5"]
        await s.commit()

        author = (await s.scalars(select(Author).options(selectinload(Author.books))
                                  .where(Author.name == name))).one()
        assert sorted(b.pages for b in author.books) == [100, 200, 300, 400, 500]
        author_id = author.id
        first = next(b for b in author.books if b.title == f"{name}-1")
        first.pages += 1
        await s.commit()
        assert await s.scalar(select(Book.pages).where(Book.title == f"{name}-1")) == 101

        await s.execute(update(Book).where(Book.author_id == author_id, Book.pages < 300)
                        .values(pages=Book.pages + 1000))
        await s.commit()

        fifth = next(b for b in author.books if b.title == f"{name}-5")
        await s.delete(fifth)
        await s.commit()
        assert await s.scalar(_count_books(author_id)) == 4

        s.add(Book(title=f"{name}-tmp", pages=1, author_id=author_id))
        await s.flush()
        assert await s.scalar(_count_books(author_id)) == 5
        await s.rollback()
        assert await s.scalar(_count_books(author_id)) == 4

        s.add(Book(title=f"{name}-1", pages=7, author_id=author_id))
        with pytest.raises(IntegrityError):
            await s.flush()
        await s.rollback()
        rows = (await s.execute(_pages_of(name))).all()
        assert [tuple(r) for r in rows] == _final_rows(name)


def test_asyncpg_orm_concurrent_sessions(pg: PgCluster, pooler: PoolerFactory) -> None:
    proc, since = _start(pg, pooler)

    async def main() -> list[tuple[str, int]]:
        # asyncpg's statement cache stays on (its default): named statements on every query.
        engine = create_async_engine(
            f"postgresql+asyncpg://postgres@{proc.host}:{proc.port}/app", pool_size=WORKERS)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            for r in range(ROUNDS):
                await asyncio.gather(*(_async_workload(engine, _name(n, r))
                                       for n in range(WORKERS)))
            async with AsyncSession(engine) as s:
                joined = await s.execute(
                    select(Author.name, func.count(Book.id)).join(Author.books)
                    .group_by(Author.name).order_by(Author.name))
                counts = [(row[0], row[1]) for row in joined]
                statements = _server_statements(proc)
                assert 1 <= len(statements) <= 2 and sum(statements) > 0
            return counts
        finally:
            await engine.dispose()

    names = sorted(_name(n, r) for r in range(ROUNDS) for n in range(WORKERS))
    assert asyncio.run(main()) == [(name, 4) for name in names]
    _check_totals(pg, since)
