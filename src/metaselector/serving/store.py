"""Where users' recent events live between requests.

`HistoryStore` is the interface a deployment can implement on another database;
`SQLiteHistoryStore` is the embedded default: one file in WAL mode, each user's most recent
`keep` events, every append committed before it is acknowledged (synchronous=FULL), so an
acknowledged write survives the server being killed. A write sent again with the same
idempotency key is stored once. A database that cannot be used (locked, read-only, disk full,
damaged) raises `StoreUnavailable`, which the server answers with 503.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path

EVENT_FIELDS = ("item", "rating", "label", "timestamp")


class StoreUnavailable(Exception):
    """The store cannot serve this call now (the server answers 503 with Retry-After)."""


class HistoryStore(ABC):
    @abstractmethod
    def append(self, user: str, events: list[dict], key: str | None = None) -> tuple[int, int]:
        """Store events (dicts with item, timestamp, rating or label, and any declared columns);
        returns (events stored by this call, the user's events kept). With `key`, a call whose
        key was seen before stores nothing and returns the first call's answer."""

    @abstractmethod
    def recent(self, user: str, limit: int | None = None) -> list[dict]:
        """The user's most recent events, oldest first, each with "user" set to `user`."""

    @abstractmethod
    def delete(self, user: str) -> int:
        """Remove every stored event of `user`, durably; returns how many were removed."""

    @abstractmethod
    def check(self) -> None:
        """Raise StoreUnavailable unless the store can be written now."""

    @abstractmethod
    def close(self) -> None: ...


class SQLiteHistoryStore(HistoryStore):
    """keep: events per user; max_user_bytes: their stored size per user (oldest dropped first);
    retention_seconds: events older than that (by timestamp, against the clock) are dropped."""

    def __init__(self, path: str | Path, keep: int = 200, busy_seconds: float = 2.0, max_user_bytes: int = 65_536,
                 retention_seconds: float | None = None) -> None:
        self.keep, self.max_user_bytes, self.retention_seconds = keep, max_user_bytes, retention_seconds
        self.evicted = 0  # events dropped by the caps and the retention period
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=busy_seconds)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA secure_delete=ON")  # deleted events are overwritten, not just unlinked
        self._db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, user TEXT NOT NULL, "
                         "timestamp INTEGER NOT NULL, event TEXT NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS events_by_user ON events (user, timestamp, id)")
        self._db.execute("CREATE TABLE IF NOT EXISTS idempotency (user TEXT NOT NULL, key TEXT NOT NULL, "
                         "stored INTEGER NOT NULL, kept INTEGER NOT NULL, PRIMARY KEY (user, key))")

    def _run(self, work):
        """`work(db)` in one write transaction; SQLite's refusals become StoreUnavailable."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as err:
                raise StoreUnavailable(f"history store: {err}") from None
            try:
                result = work(self._db)
                self._db.execute("COMMIT")
                return result
            except BaseException as err:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if isinstance(err, sqlite3.Error):
                    raise StoreUnavailable(f"history store: {err}") from None
                raise

    def append(self, user: str, events: list[dict], key: str | None = None) -> tuple[int, int]:
        # the stored event never holds a user: the user is the request's, given on every read
        rows = [(user, int(e["timestamp"]), json.dumps({k: v for k, v in e.items() if k != "user"}, sort_keys=True))
                for e in events]

        def work(db):
            if key is not None:
                seen = db.execute("SELECT stored, kept FROM idempotency WHERE key = ? AND user = ?",
                                  (key, user)).fetchone()
                if seen is not None:
                    return int(seen[0]), int(seen[1])
            db.executemany("INSERT INTO events (user, timestamp, event) VALUES (?, ?, ?)", rows)
            self.evicted += self._evict(db, user)
            kept = int(db.execute("SELECT COUNT(*) FROM events WHERE user = ?", (user,)).fetchone()[0])
            if key is not None:
                db.execute("INSERT INTO idempotency (user, key, stored, kept) VALUES (?, ?, ?, ?)",
                           (user, key, len(rows), kept))
            return len(rows), kept

        return self._run(work)

    def _evict(self, db, user: str) -> int:
        """Drop the user's events past the count and byte caps (oldest first), and everyone's
        events older than the retention period; how many were dropped."""
        before = db.total_changes
        db.execute("DELETE FROM events WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER w AS n, "
                   "SUM(LENGTH(event)) OVER w AS size FROM events WHERE user = ? WINDOW w AS (ORDER BY timestamp DESC, "
                   "id DESC)) WHERE n > ? OR size > ?)", (user, self.keep, self.max_user_bytes))
        if self.retention_seconds is not None:
            db.execute("DELETE FROM events WHERE timestamp < ?", (int(time.time() - self.retention_seconds),))
        return db.total_changes - before

    def recent(self, user: str, limit: int | None = None) -> list[dict]:
        with self._lock:
            try:
                rows = self._db.execute("SELECT event FROM events WHERE user = ? ORDER BY timestamp DESC, id DESC "
                                        "LIMIT ?", (user, limit or self.keep)).fetchall()
            except sqlite3.Error as err:
                raise StoreUnavailable(f"history store: {err}") from None
        return [{**json.loads(r[0]), "user": user} for r in reversed(rows)]

    def delete(self, user: str) -> int:
        def work(db):
            removed = db.execute("DELETE FROM events WHERE user = ?", (user,)).rowcount
            db.execute("DELETE FROM idempotency WHERE user = ?", (user,))
            return removed

        removed = self._run(work)
        with self._lock:  # move the deletion out of the WAL into the database file, and empty the WAL
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as err:
                raise StoreUnavailable(f"history store: {err}") from None
        return int(removed)

    def check(self) -> None:
        self._run(lambda db: None)  # takes the write lock: fails if read-only, locked or gone

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_store(where: str, keep: int, max_user_bytes: int, retention_seconds: float | None) -> HistoryStore:
    """The store `where` names: PostgreSQL for a postgresql:// URL (several servers), else a
    SQLite file (one server). Raises StoreUnavailable if it cannot be opened."""
    caps = {"keep": keep, "max_user_bytes": max_user_bytes, "retention_seconds": retention_seconds}
    if where.startswith(("postgresql://", "postgres://")):
        from .postgres_store import PostgresHistoryStore

        return PostgresHistoryStore(where, **caps)
    try:
        return SQLiteHistoryStore(Path(where), **caps)
    except (sqlite3.Error, OSError) as err:
        raise StoreUnavailable(f"{where}: {err}") from None
