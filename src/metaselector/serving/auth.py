"""API keys with scopes, read from a file: one key per line, a space, its scopes separated by
commas (`score`, `events`, `history`, `admin`); `#` starts a comment.

    3f9c...e1 score
    77ab...02 score,events,history
    d41c...9a admin

Requests send `Authorization: Bearer KEY`. Keys are compared in constant time and never logged;
no valid key is a 401, a key without the route's scope a 403. `/v1/health` needs no key.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from ..errors import InputError

SCOPES = ("score", "events", "history", "admin")
MIN_KEY_LENGTH = 16


class KeyRing:
    def __init__(self, keys: dict[str, frozenset[str]]) -> None:
        self._keys = [(key.encode(), scopes) for key, scopes in keys.items()]

    @classmethod
    def read(cls, path: Path) -> KeyRing:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"{path}: cannot read the API keys file ({err.__class__.__name__})") from None
        keys: dict[str, frozenset[str]] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise InputError(f"{path}, line {number}: expected a key, a space and its scopes (comma-separated)")
            key, scopes = parts[0], frozenset(parts[1].split(","))
            unknown = sorted(scopes - set(SCOPES))
            if unknown:
                raise InputError(f"{path}, line {number}: unknown scope '{unknown[0]}' (expected {', '.join(SCOPES)})")
            if len(key) < MIN_KEY_LENGTH:
                raise InputError(f"{path}, line {number}: a key needs at least {MIN_KEY_LENGTH} characters")
            keys[key] = scopes
        if not keys:
            raise InputError(f"{path}: no API key in the file")
        return cls(keys)

    def scopes_of(self, authorization: str | None) -> frozenset[str] | None:
        """The scopes of the key in an `Authorization: Bearer KEY` header; None if no valid key.
        Every stored key is compared, in constant time, whichever matches."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        sent = authorization[len("Bearer "):].strip().encode()
        found = None
        for key, scopes in self._keys:
            if hmac.compare_digest(key, sent):
                found = scopes
        return found
