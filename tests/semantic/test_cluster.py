"""WorkerSpec / ClusterSpec: validation, fingerprints, serialisation."""

from __future__ import annotations

import json

import pytest

from genie.semantic import ClusterSpec, WorkerSpec


def cluster(**overrides) -> ClusterSpec:
    w = dict(name="w0", device="cuda:0", memory_bytes=80 * 2**30, flops=1e15, bandwidth=3.3e12)
    w.update(overrides)
    return ClusterSpec((WorkerSpec(**w), WorkerSpec("w1", "cpu", 2**34, 1e12, 1e11)), link_bandwidth=50e9)


def test_fingerprint_is_stable_and_sensitive():
    a = cluster()
    assert a.fingerprint() == cluster().fingerprint()
    assert len(a.fingerprint()) == 64 and int(a.fingerprint(), 16) >= 0
    assert cluster(memory_bytes=79 * 2**30).fingerprint() != a.fingerprint()
    assert cluster(name="other").fingerprint() != a.fingerprint()
    assert a.workers[0].fingerprint() != a.workers[1].fingerprint()


def test_round_trip_through_json():
    a = cluster()
    again = ClusterSpec.from_dict(json.loads(json.dumps(a.to_dict())))
    assert again == a and isinstance(again.workers, tuple)
    assert WorkerSpec.from_dict(a.workers[1].to_dict()) == a.workers[1]
    assert a.worker("w1").device == "cpu"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"memory_bytes": 0}, "memory_bytes must be a positive number"),
        ({"flops": -1.0}, "flops must be a positive number"),
        ({"bandwidth": float("nan")}, "bandwidth must be a positive number"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"name": "w1"}, "duplicate worker names"),
    ],
)
def test_bad_specs_say_which_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        cluster(**overrides)


def test_empty_cluster_and_bad_link_are_refused():
    with pytest.raises(ValueError, match="at least one worker"):
        ClusterSpec((), 1e9)
    with pytest.raises(ValueError, match="link_bandwidth"):
        ClusterSpec((WorkerSpec("w", "cpu", 1, 1.0, 1.0),), 0)
    with pytest.raises(KeyError, match="no worker named 'x'"):
        cluster().worker("x")


def test_from_dict_names_the_bad_field():
    data = cluster().to_dict()
    data["workers"][0]["memory_bytes"] = "lots"
    with pytest.raises(ValueError, match=r"workers\[0\].memory_bytes"):
        ClusterSpec.from_dict(data)
