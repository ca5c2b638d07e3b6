"""The dynamic batcher driven by hand with a fake clock: no threads, no sleeps."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genie.errors import ResourceExhausted
from genie.serving.stateless.batcher import BatchPolicy, DynamicBatcher, length_buckets


def make_batcher(
    size: int = 4, delay: float = 0.010, queue: int = 64, edges: tuple[int, ...] = (), fill: float = 0.5
) -> DynamicBatcher[str]:
    return DynamicBatcher(BatchPolicy(max_batch_size=size, max_queue_delay_s=delay, max_queue=queue,
                                      bucket_edges=edges, min_fill=fill))


def test_a_full_batch_is_taken_at_once_and_the_rest_waits() -> None:
    b = make_batcher(size=3, delay=1.0)
    for i in range(5):
        b.add(f"r{i}", length=10, now=0.0)
    assert b.take(now=0.0) == ["r0", "r1", "r2"]
    assert len(b) == 2
    assert b.take(now=0.5) == []  # two left: not full, not waited long enough
    assert b.next_due() == 1.0


def test_the_delay_flushes_a_partial_batch() -> None:
    b = make_batcher(size=8, delay=0.010)
    b.add("a", 5, now=100.0)
    b.add("b", 5, now=100.004)
    assert b.take(now=100.009) == []
    assert b.next_due() == pytest.approx(100.010)
    assert b.take(now=100.010) == ["a", "b"]
    assert len(b) == 0 and b.next_due() is None


def test_taking_at_next_due_never_comes_back_empty() -> None:
    b = make_batcher(size=8, delay=0.2)
    b.add("a", 5, now=0.1)
    due = b.next_due()
    assert due == 0.1 + 0.2
    assert b.take(now=due) == ["a"]


def test_a_full_bucket_is_due_now() -> None:
    b = make_batcher(size=2, delay=5.0)
    b.add("a", 1, now=3.0)
    assert b.next_due() == 8.0
    b.add("b", 1, now=4.0)
    assert b.next_due() == 3.0  # no later than any `now` after the last add
    assert b.take(now=4.0) == ["a", "b"]


def test_buckets_keep_a_long_item_out_of_a_batch_of_short_ones() -> None:
    b = make_batcher(size=3, delay=1.0, edges=(16, 64, 256))
    b.add("short1", 10, now=0.0)
    b.add("long", 200, now=0.0)
    b.add("short2", 16, now=0.0)
    b.add("short3", 3, now=0.0)
    assert b.take(now=0.0) == ["short1", "short2", "short3"]
    assert b.take(now=0.5) == []
    assert b.take(now=1.0) == ["long"]


def test_a_length_past_the_last_edge_goes_to_the_last_bucket() -> None:
    policy = BatchPolicy(max_batch_size=2, max_queue_delay_s=1.0, max_queue=8, bucket_edges=(16, 64))
    assert [policy.bucket_of(n) for n in (0, 16, 17, 64, 65, 10_000)] == [0, 0, 1, 1, 1, 1]
    b = DynamicBatcher(policy)
    b.add("mid", 40, now=0.0)
    b.add("huge", 5000, now=0.0)
    assert b.take(now=0.0) == ["mid", "huge"]


def test_due_buckets_go_oldest_first_so_none_starves() -> None:
    b = make_batcher(size=2, delay=1.0, edges=(16, 64), fill=1.0)  # no topping up: buckets alone
    b.add("long-old", 50, now=0.0)
    b.add("short-a", 5, now=0.5)
    b.add("short-b", 5, now=0.6)  # the short bucket is full, but the long one is due and older
    assert b.take(now=1.0) == ["long-old"]
    assert b.take(now=1.0) == ["short-a", "short-b"]


def test_equal_arrival_times_go_first_added_first_across_buckets() -> None:
    b = make_batcher(size=2, delay=0.0, edges=(16, 64), fill=1.0)
    b.add("long", 50, now=1.0)
    b.add("short", 5, now=1.0)
    assert b.take(now=1.0) == ["long"]
    assert b.take(now=1.0) == ["short"]


def test_a_batch_with_room_is_topped_up_with_shorter_items_while_half_of_it_is_real_tokens() -> None:
    b = make_batcher(size=8, delay=0.0, edges=(16, 32, 64))
    b.add("long-a", 40, now=0.0)  # bucket 64, the oldest: it goes first
    b.add("long-b", 40, now=0.0)
    b.add("mid", 30, now=0.1)  # bucket 32: the nearest shorter one, topped up first
    b.add("tiny-1", 2, now=0.2)  # bucket 16
    b.add("tiny-2", 2, now=0.2)
    b.add("huge", 60, now=0.3)  # bucket 64 too, but later than the batch's first pick ... and longer
    # long-a, long-b, huge (the bucket, oldest first), then mid: (40+40+60+30) / (4*60) = 0.71 >= 0.5;
    # tiny-1: (170+2) / (5*60) = 0.57 still; tiny-2: 174 / 360 = 0.48 < 0.5, so it waits.
    assert b.take(now=0.3) == ["long-a", "long-b", "huge", "mid", "tiny-1"]
    assert b.take(now=0.3) == ["tiny-2"]


def test_a_longer_item_never_joins_a_batch_of_shorter_ones() -> None:
    b = make_batcher(size=8, delay=0.0, edges=(16, 64, 256))
    b.add("short-1", 10, now=0.0)
    b.add("short-2", 12, now=0.0)
    b.add("long", 200, now=0.1)  # later and longer: it would make both short ones pay 200 tokens
    assert b.take(now=0.1) == ["short-1", "short-2"]
    assert b.take(now=0.1) == ["long"]


def test_zero_delay_takes_whatever_is_waiting_at_once() -> None:
    b = make_batcher(size=4, delay=0.0)
    b.add("a", 1, now=2.0)
    assert b.next_due() == 2.0
    assert b.take(now=2.0) == ["a"]
    for name in "bcdef":
        b.add(name, 1, now=3.0)
    assert b.take(now=3.0) == ["b", "c", "d", "e"]
    assert b.take(now=3.0) == ["f"]
    assert b.take(now=3.0) == []


def test_remove_drops_a_waiting_item_by_identity() -> None:
    b: DynamicBatcher[list[int]] = DynamicBatcher(BatchPolicy(max_batch_size=4, max_queue_delay_s=0.0, max_queue=8))
    first, twin = [1], [1]  # equal, not the same object
    b.add(first, 1, now=0.0)
    b.add(twin, 1, now=0.0)
    assert b.remove(twin) is True
    assert b.remove(twin) is False
    assert b.remove([1]) is False
    assert len(b) == 1
    taken = b.take(now=0.0)
    assert len(taken) == 1 and taken[0] is first


def test_removing_the_oldest_moves_next_due() -> None:
    b = make_batcher(size=4, delay=1.0)
    b.add("a", 1, now=0.0)
    b.add("b", 1, now=0.5)
    assert b.remove("a") is True
    assert b.next_due() == 1.5
    assert b.remove("b") is True
    assert b.next_due() is None and b.take(now=10.0) == []


def test_a_full_queue_refuses_with_429_and_frees_up_after_a_take() -> None:
    b = make_batcher(size=2, delay=1.0, queue=3)
    for i in range(3):
        b.add(i, 1, now=0.0)
    with pytest.raises(ResourceExhausted, match="queue is full.*retry") as err:
        b.add(3, 1, now=0.0)
    assert err.value.http_status == 429
    assert len(b) == 3
    assert b.take(now=0.0) == [0, 1]
    b.add(3, 1, now=0.0)
    assert len(b) == 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": True}, "max_batch_size"),
        ({"max_queue_delay_s": -0.1}, "max_queue_delay_s"),
        ({"min_fill": 0}, "min_fill"),
        ({"min_fill": 1.5}, "min_fill"),
        ({"max_queue_delay_s": float("nan")}, "max_queue_delay_s"),
        ({"max_queue": 3}, "max_queue"),
        ({"bucket_edges": (16, 16)}, "bucket_edges"),
        ({"bucket_edges": (32, 16)}, "bucket_edges"),
        ({"bucket_edges": (0, 16)}, "bucket_edges"),
        ({"bucket_edges": [16, 32]}, "bucket_edges"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_field(kwargs: dict, field: str) -> None:
    args = {"max_batch_size": 4, "max_queue_delay_s": 0.01, "max_queue": 16, **kwargs}
    with pytest.raises(ValueError, match=field):
        BatchPolicy(**args)


def test_a_negative_length_is_refused() -> None:
    with pytest.raises(ValueError, match="length"):
        make_batcher().add("a", -1, now=0.0)


def test_length_buckets_double_up_to_the_max_length() -> None:
    assert length_buckets(512) == (16, 32, 64, 128, 256, 512)
    assert length_buckets(100) == (16, 32, 64, 128)
    assert length_buckets(10) == (16,)
    assert length_buckets(100, smallest=8) == (8, 16, 32, 64, 128)
    with pytest.raises(ValueError, match="max_length"):
        length_buckets(0)


# Each step: ("add", length, dt) or ("take", dt) or ("remove", pick) with dt the clock's advance.
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 300), st.floats(0, 0.02)),
        st.tuples(st.just("take"), st.floats(0, 0.02)),
        st.tuples(st.just("remove"), st.integers(0, 1000)),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None, database=None, derandomize=True)
@given(
    steps=_steps,
    size=st.integers(1, 5),
    delay=st.sampled_from([0.0, 0.005, 0.05]),
    edges=st.sampled_from([(), (16,), (16, 64, 256), length_buckets(128)]),
)
def test_every_item_is_taken_once_in_batches_that_fit_and_mix_buckets_only_when_full_enough(
    steps, size, delay, edges
) -> None:
    policy = BatchPolicy(max_batch_size=size, max_queue_delay_s=delay, max_queue=40, bucket_edges=edges)
    b: DynamicBatcher[object] = DynamicBatcher(policy)
    now, added, removed, taken = 0.0, [], set(), []
    bucket_of: dict[int, int] = {}
    length_of: dict[int, int] = {}

    def check(batch: list) -> None:
        assert len(batch) <= size
        buckets = [bucket_of[id(x)] for x in batch]
        lengths = [length_of[id(x)] for x in batch]
        # The first item is from the batch's own bucket; others from it or, topping up, from shorter ones.
        assert all(k <= buckets[0] for k in buckets)
        if len(set(buckets)) > 1:  # topped up: at least min_fill of the padded batch is real tokens
            assert sum(lengths) >= policy.min_fill * max(lengths) * len(batch) - 1e-9
        taken.extend(batch)

    for step in steps:
        now += step[-1] if step[0] != "remove" else 0.0
        if step[0] == "add":
            item = object()
            try:
                b.add(item, step[1], now)
            except ResourceExhausted:
                assert len(b) == 40
                continue
            added.append(item)
            bucket_of[id(item)] = policy.bucket_of(step[1])
            length_of[id(item)] = step[1]
        elif step[0] == "take":
            check(b.take(now))
        elif added:
            item = added[step[1] % len(added)]
            was_waiting = all(item is not t for t in taken) and id(item) not in removed
            assert b.remove(item) is was_waiting
            if was_waiting:
                removed.add(id(item))
        assert len(b) == len(added) - len(taken) - len(removed)
    while (due := b.next_due()) is not None:  # drain: each due time yields a batch
        batch = b.take(max(now, due))
        assert batch
        check(batch)
    assert sorted(map(id, taken)) == sorted(id(x) for x in added if id(x) not in removed)
    assert len({id(x) for x in taken}) == len(taken)
