"""Online encoding (one user's raw events at request time) equals offline encoding, row for row."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metaselector.data.encoder import FeatureEncoder
from metaselector.data.loading import load_dataset

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _raw_events(data):
    """The dataset's events as raw columns, in the encoded order (user, item as raw ids)."""
    layout = data.encoder.vocabularies
    return pd.DataFrame({
        "user": np.asarray(layout["@user"])[data.users],
        "item": np.asarray(layout["@item"])[data.items],
        "label": data.labels,
        "timestamp": data.timestamps,
    })


def test_every_row_of_ml_latest_small_encodes_online_as_offline(ml_small):
    events = _raw_events(ml_small)
    encoder = FeatureEncoder.from_dict(ml_small.encoder.to_dict())  # as a saved model holds it
    starts = np.flatnonzero(np.r_[True, ml_small.users[1:] != ml_small.users[:-1]])
    stops = np.r_[starts[1:], len(events)]
    for start, stop in zip(starts, stops, strict=True):
        history = events.iloc[start:stop].sample(frac=1.0, random_state=int(start))  # any order
        candidates = events.iloc[start:stop].drop(columns="label")
        online = encoder.encode(candidates, history=history)
        np.testing.assert_array_equal(online.ids, ml_small.ids[start:stop])
        np.testing.assert_array_equal(online.weights, ml_small.weights[start:stop])
        assert online.unknown == {"users": 0, "items": 0}


def test_demographics_come_from_the_user_table_online(ml1m_fixture):
    events = _raw_events(ml1m_fixture)
    user = events["user"].iloc[0]
    rows = np.flatnonzero(events["user"] == user)
    online = ml1m_fixture.encoder.encode(events.iloc[rows][["user", "item", "timestamp"]],
                                         history=events.iloc[rows])
    np.testing.assert_array_equal(online.ids, ml1m_fixture.ids[rows])


def test_unknown_users_and_items_map_to_zero_and_are_counted(ml1m_fixture):
    encoder = ml1m_fixture.encoder
    history = pd.DataFrame({"user": ["nobody"] * 3, "item": [1, "no-such-item", 2],
                            "rating": [5, 1, 4], "timestamp": [10, 20, 30]})
    candidates = pd.DataFrame({"user": ["nobody"] * 2, "item": ["no-such-item", 1], "timestamp": [25, 40]})
    out = encoder.encode(candidates, history=history)
    user_slot = encoder.layout.fields[encoder.layout.field_index("user_id")].slot_start
    assert (out.ids[:, user_slot] == 0).all()
    assert out.unknown == {"users": 2, "items": 1}
    hist = encoder.layout.fields[encoder.layout.field_index("user_history_movie")]
    # the first candidate (t=25) sees items 1 and the unknown one; only item 1 gets an id
    assert np.count_nonzero(out.ids[0, hist.slot_start:hist.slot_stop]) == 1
    assert np.count_nonzero(out.ids[1, hist.slot_start:hist.slot_stop]) == 2
    labels = encoder.label_rule.labels(history)
    assert labels.tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("name,folder", [("movielens-100k", "ml-100k"), ("amazon-electronics", "amazon")])
def test_online_equals_offline_on_the_format_fixtures(name, folder):
    data = load_dataset(name, FIXTURES / folder, use_cache=False, log=lambda m: None)
    events = _raw_events(data)
    online = data.encoder.encode(events.drop(columns="label"), history=events.sample(frac=1.0, random_state=1))
    np.testing.assert_array_equal(online.ids, data.ids)
    np.testing.assert_array_equal(online.weights, data.weights)
