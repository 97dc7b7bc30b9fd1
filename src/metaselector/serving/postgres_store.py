"""A history store on PostgreSQL (psycopg 3 with a connection pool), for several servers on
several machines: one history per user whichever server a request reaches. Same interface and
guarantees as the SQLite store: an append is committed before it is acknowledged, each user keeps
their latest `keep` events within `max_user_bytes`, a write sent again with the same idempotency
key is stored once, and a database that cannot be reached answers StoreUnavailable (503).

The tables (created on start if missing; a DBA can create them beforehand with the same SQL):

    CREATE TABLE IF NOT EXISTS metaselector_events (id BIGSERIAL PRIMARY KEY, "user" TEXT NOT NULL,
        timestamp BIGINT NOT NULL, event TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS metaselector_events_by_user ON metaselector_events ("user", timestamp, id);
    CREATE TABLE IF NOT EXISTS metaselector_idempotency ("user" TEXT NOT NULL, key TEXT NOT NULL,
        stored INTEGER NOT NULL, kept INTEGER NOT NULL, PRIMARY KEY ("user", key));
"""

from __future__ import annotations

import json
import time

from .store import HistoryStore, StoreUnavailable

SCHEMA = (
    'CREATE TABLE IF NOT EXISTS metaselector_events (id BIGSERIAL PRIMARY KEY, "user" TEXT NOT NULL, '
    "timestamp BIGINT NOT NULL, event TEXT NOT NULL)",
    'CREATE INDEX IF NOT EXISTS metaselector_events_by_user ON metaselector_events ("user", timestamp, id)',
    'CREATE TABLE IF NOT EXISTS metaselector_idempotency ("user" TEXT NOT NULL, key TEXT NOT NULL, '
    'stored INTEGER NOT NULL, kept INTEGER NOT NULL, PRIMARY KEY ("user", key))',
)


class PostgresHistoryStore(HistoryStore):
    def __init__(self, url: str, keep: int = 200, max_user_bytes: int = 65_536,
                 retention_seconds: float | None = None, pool_size: int = 4, timeout_seconds: float = 5.0) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        self._errors = (psycopg.Error, TimeoutError)
        self.keep, self.max_user_bytes, self.retention_seconds = keep, max_user_bytes, retention_seconds
        self.timeout_seconds = timeout_seconds
        self.evicted = 0
        self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, timeout=timeout_seconds, open=False,
                                    kwargs={"connect_timeout": int(max(1, timeout_seconds))})
        try:
            self._pool.open(wait=True, timeout=timeout_seconds)
            with self._pool.connection() as db:
                for statement in SCHEMA:
                    db.execute(statement)
        except Exception as err:  # psycopg and the pool raise several types for a URL they cannot use
            self._pool.close()  # no reconnecting in the background
            raise StoreUnavailable(f"history store {_redacted(url)}: {err.__class__.__name__}") from None

    def _run(self, work):
        """`work(connection)` in one transaction (committed on return); failures: StoreUnavailable."""
        try:
            with self._pool.connection(timeout=self.timeout_seconds) as db, db.transaction():
                return work(db)
        except self._errors as err:
            raise StoreUnavailable(f"history store: {err.__class__.__name__}: {err}") from None

    def append(self, user: str, events: list[dict], key: str | None = None) -> tuple[int, int]:
        rows = [(user, int(e["timestamp"]), json.dumps({k: v for k, v in e.items() if k != "user"}, sort_keys=True))
                for e in events]

        def work(db):
            # one writer per user at a time: the caps and the idempotency check see every write
            db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (user,))
            if key is not None:
                seen = db.execute('SELECT stored, kept FROM metaselector_idempotency WHERE "user" = %s AND key = %s',
                                  (user, key)).fetchone()
                if seen is not None:
                    return int(seen[0]), int(seen[1])
            with db.cursor() as cursor:
                cursor.executemany('INSERT INTO metaselector_events ("user", timestamp, event) VALUES (%s, %s, %s)',
                                   rows)
            self.evicted += self._evict(db, user)
            kept = int(db.execute('SELECT COUNT(*) FROM metaselector_events WHERE "user" = %s', (user,)).fetchone()[0])
            if key is not None:
                db.execute('INSERT INTO metaselector_idempotency ("user", key, stored, kept) VALUES (%s, %s, %s, %s)',
                           (user, key, len(rows), kept))
            return len(rows), kept

        return self._run(work)

    def _evict(self, db, user: str) -> int:
        removed = db.execute(
            'DELETE FROM metaselector_events WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER w AS n, '
            'SUM(LENGTH(event)) OVER w AS size FROM metaselector_events WHERE "user" = %s WINDOW w AS '
            "(ORDER BY timestamp DESC, id DESC)) ranked WHERE n > %s OR size > %s)",
            (user, self.keep, self.max_user_bytes)).rowcount
        if self.retention_seconds is not None:
            removed += db.execute("DELETE FROM metaselector_events WHERE timestamp < %s",
                                  (int(time.time() - self.retention_seconds),)).rowcount
        return removed

    def recent(self, user: str, limit: int | None = None) -> list[dict]:
        rows = self._run(lambda db: db.execute(
            'SELECT event FROM metaselector_events WHERE "user" = %s ORDER BY timestamp DESC, id DESC LIMIT %s',
            (user, limit or self.keep)).fetchall())
        return [{**json.loads(r[0]), "user": user} for r in reversed(rows)]

    def delete(self, user: str) -> int:
        def work(db):
            removed = db.execute('DELETE FROM metaselector_events WHERE "user" = %s', (user,)).rowcount
            db.execute('DELETE FROM metaselector_idempotency WHERE "user" = %s', (user,))
            return int(removed)

        return self._run(work)

    def check(self) -> None:
        self._run(lambda db: db.execute("SELECT 1").fetchone())

    def close(self) -> None:
        self._pool.close()


def _redacted(url: str) -> str:
    """The URL without a password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return urlunsplit(parts)
