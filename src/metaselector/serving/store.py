"""Where users' recent events live between requests.

`HistoryStore` is the interface a deployment can implement on another database;
`SQLiteHistoryStore` is the embedded default: one file in WAL mode, each user's most recent
`keep` events, every append committed before it is acknowledged (synchronous=FULL), so an
acknowledged write survives the server being killed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from pathlib import Path

EVENT_FIELDS = ("item", "rating", "label", "timestamp")


class HistoryStore(ABC):
    @abstractmethod
    def append(self, user: str, events: list[dict]) -> int:
        """Store events (dicts with item, timestamp, rating or label, and any declared columns);
        returns how many of the user's events are kept."""

    @abstractmethod
    def recent(self, user: str, limit: int | None = None) -> list[dict]:
        """The user's most recent events, oldest first."""

    @abstractmethod
    def close(self) -> None: ...


class SQLiteHistoryStore(HistoryStore):
    def __init__(self, path: str | Path, keep: int = 200) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, user TEXT NOT NULL, "
                         "timestamp INTEGER NOT NULL, event TEXT NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS events_by_user ON events (user, timestamp, id)")

    def append(self, user: str, events: list[dict]) -> int:
        rows = [(user, int(e["timestamp"]), json.dumps(e, sort_keys=True)) for e in events]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO events (user, timestamp, event) VALUES (?, ?, ?)", rows)
                self._db.execute(
                    "DELETE FROM events WHERE user = ? AND id NOT IN (SELECT id FROM events WHERE user = ? "
                    "ORDER BY timestamp DESC, id DESC LIMIT ?)", (user, user, self.keep))
                kept = self._db.execute("SELECT COUNT(*) FROM events WHERE user = ?", (user,)).fetchone()[0]
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(kept)

    def recent(self, user: str, limit: int | None = None) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT event FROM events WHERE user = ? ORDER BY timestamp DESC, id DESC LIMIT ?",
                                    (user, limit or self.keep)).fetchall()
        return [json.loads(r[0]) for r in reversed(rows)]

    def close(self) -> None:
        with self._lock:
            self._db.close()
