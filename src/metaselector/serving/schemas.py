"""The request bodies the server accepts, built for one model: events and candidates carry only
the fields that model reads (item, timestamp, rating or label, and the dataset's declared
per-event columns); anything else is refused with 422 naming the field, ids and strings are
bounded, numbers finite, and every string is valid UTF-8 (a lone surrogate cannot reach the
store). User-level side columns (e.g. MovieLens-1M's gender) come from the model's own tables,
never from a request, so one request cannot change how another user in its batch is encoded.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, create_model

from ..data.sources import TIMESTAMP_RANGE

MAX_ID_LENGTH = 256
MAX_TEXT_LENGTH = 1024
INT_RANGE = (-(2**63), 2**63 - 1)


def _utf8(value: str) -> str:
    if not is_utf8(value):
        raise ValueError("must be valid UTF-8 text (no lone surrogates)")
    return value


def is_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Text = Annotated[StrictStr, Field(max_length=MAX_TEXT_LENGTH), AfterValidator(_utf8)]
RawId = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_LENGTH), AfterValidator(_utf8)] | \
    Annotated[StrictInt, Field(ge=INT_RANGE[0], le=INT_RANGE[1])]
Number = Annotated[StrictFloat, AfterValidator(_finite)] | Annotated[StrictInt, Field(ge=INT_RANGE[0], le=INT_RANGE[1])]
Timestamp = Annotated[StrictInt, Field(ge=TIMESTAMP_RANGE[0], le=TIMESTAMP_RANGE[1])]
STRICT = ConfigDict(extra="forbid")


class RequestModels:
    """ScoreRequest and EventsRequest for a model whose events declare `columns`."""

    def __init__(self, columns: tuple[str, ...], max_candidates: int, max_events: int) -> None:
        declared = {c: (Text | Number, ...) for c in columns}  # every event of such data has them
        self.candidate = create_model("Candidate", __config__=STRICT, item=(RawId, ...), timestamp=(Timestamp, ...),
                                      **declared)
        self.event = create_model("Event", __config__=STRICT, item=(RawId, ...), timestamp=(Timestamp, ...),
                                  rating=(Number | None, None), label=(Annotated[StrictInt, Field(ge=0, le=1)] | None,
                                                                       None), **declared)
        self.score = create_model(
            "ScoreRequest", __config__=STRICT, user=(RawId, ...),
            candidates=(list[self.candidate], Field(min_length=1, max_length=max_candidates)),
            history=(list[self.event] | None, Field(default=None, max_length=max_events)))
        self.events = create_model("EventsRequest", __config__=STRICT, user=(RawId, ...),
                                   events=(list[self.event], Field(min_length=1, max_length=max_events)))


def declared_columns(encoder) -> tuple[str, ...]:
    """The per-event side columns a model reads from its events (user-level ones excluded)."""
    out = []
    for field in encoder.spec.fields:
        kind, _, column = field.source.partition(":")
        if kind in ("col", "multi") and column not in encoder.user_columns:
            out.append(column)
    return tuple(dict.fromkeys(out))


def first_error(errors: list[dict]) -> tuple[int, str]:
    """(status, 'field.path: message') of a pydantic error list: 413 for a list over its limit
    (candidates, history, events), else 422."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
    message = first["msg"]
    if first.get("type") == "extra_forbidden":
        message = "not a field this model reads"
    status = 413 if first.get("type") == "too_long" and len(first["loc"]) == 1 else 422
    return status, f"{where}: {message}"


def labelled(events: list[BaseModel | dict], label_threshold: float | None) -> list[dict]:
    """Events (request models, or stored dicts) as dicts with one `label` each, from `rating` by
    the model's rule where no label is given, and no user: every request's frame then has the
    same columns, so a batch never mixes a label column with a rating column. The rating stays
    (None where an event has none) for the user's profile, which reads raw ratings."""
    out = []
    for event in events:
        row = dict(event) if isinstance(event, dict) else event.model_dump(exclude_none=True)
        row.pop("user", None)
        if "label" not in row and row.get("rating") is not None and label_threshold is not None:
            row["label"] = int(row["rating"] >= label_threshold)
        row["rating"] = row.get("rating") if label_threshold is not None else None
        out.append(row)
    return out
