"""The StatelessService over fake replicas (no processes): batching, padding, isolation, loss, drain.

`FakeEncoder` plays a worker's Infer honestly: every row's answer depends on that row alone (the sum of its
real token ids and its token count, or its tensor times two), so a request's answer must not depend on which
batch it shared. It records every batch it was sent, can hold a call until a gate opens, and fails on demand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import torch

from genie.errors import InvalidRequest, ResourceExhausted, Unavailable
from genie.serving.metrics import Metrics
from genie.serving.replica import Replica, Stage
from genie.serving.stateless.batcher import BatchPolicy
from genie.serving.stateless.service import StatelessService, TextInputs

Tensors = dict[str, torch.Tensor]
PAD = 7
REFUSED = 99  # the token id FakeEncoder refuses as invalid
GUARD_S = 5.0  # a bound on waits that should end at once; never a way to wait for work


class FakeEncoder:
    """One worker's Infer: embedding [N, 2] = (sum of real ids, token count) per row, or y = 2 * x."""

    def __init__(self, gate: asyncio.Event | None = None, fail_with: Exception | None = None,
                 outputs: Callable[[Tensors], Tensors] | None = None) -> None:
        self.gate = gate
        self.fail_with = fail_with
        self.outputs = outputs
        self.calls: list[Tensors] = []
        self.cancelled = 0
        self.started = asyncio.Event()  # set once a call has arrived

    async def infer(self, fragment_id: str, inputs: Tensors, timeout: float | None = None) -> Tensors:
        assert fragment_id == "frag" and timeout == 30.0
        self.calls.append({name: t.clone() for name, t in inputs.items()})
        self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail_with is not None:
            raise self.fail_with
        if self.outputs is not None:
            return self.outputs(inputs)
        return answer(inputs)

    def batch_sizes(self) -> list[int]:
        return [next(iter(c.values())).shape[0] for c in self.calls]

    def rows_sent(self) -> list[list[int]]:
        return [row[mask.bool()].tolist() for c in self.calls for row, mask in zip(c["input_ids"], c["attention_mask"])]


def answer(inputs: Tensors) -> Tensors:
    if "input_ids" in inputs:
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        if (ids[mask.bool()] == REFUSED).any():
            raise InvalidRequest(f"token id {REFUSED} is outside the vocabulary")
        return {"embedding": torch.stack([(ids * mask).sum(1), mask.sum(1)], dim=1).float()}
    return {"y": inputs["x"] * 2}


def expected(ids: list[int]) -> torch.Tensor:
    return torch.tensor([float(sum(ids)), float(len(ids))])


def make_service(clients: dict[str, FakeEncoder], size: int = 4, delay: float = 0.0, queue: int = 16,
                 edges: tuple[int, ...] = (), migration_limit: int = 2, text: TextInputs | None = None,
                 down: list[str] | None = None, whole: bool = False) -> StatelessService:
    replicas = {name: Replica(name, [Stage(f"w-{name}", c, "frag")], 0, warm=True) for name, c in clients.items()}
    policy = BatchPolicy(max_batch_size=size, max_queue_delay_s=delay, max_queue=queue, bucket_edges=edges)
    on_down = None if down is None else (lambda name, reason: down.append(name))
    return StatelessService("enc", replicas, policy, Metrics(), timeout=30.0, migration_limit=migration_limit,
                            text=text or TextInputs(pad_id=PAD, max_length=64, token_type_ids=False),
                            on_replica_down=on_down, whole_requests=whole)


@pytest.fixture
async def running():
    tasks: list[asyncio.Task] = []

    def start(service: StatelessService) -> StatelessService:
        tasks.append(asyncio.create_task(service.run()))
        return service

    yield start
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def until(condition: Callable[[], bool], steps: int = 1000) -> None:
    """Yields to the loop until `condition` holds; fails if it never does (no clock involved)."""
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def guarded(aw):
    return await asyncio.wait_for(aw, GUARD_S)


def one(service: StatelessService, ids: list[int]) -> asyncio.Task:
    """One client's request of one row, as its own task."""
    return asyncio.create_task(service.run_ids([ids]))


ROWS = [[1, 2, 3], [10, 20], [5], [4, 4, 4, 4], [100, 1, 2], [8, 9]]


async def test_concurrent_clients_share_a_batch_and_get_their_own_rows(running) -> None:
    client = FakeEncoder()
    service = running(make_service({"r0": client}, size=4, delay=60.0))  # only a full batch can go
    results = await guarded(asyncio.gather(*(one(service, ids) for ids in ROWS[:4])))
    assert client.batch_sizes() == [4]
    assert service.largest_batch == 4 and service.batches == 1
    for ids, [out] in zip(ROWS[:4], results):
        assert set(out) == {"embedding"} and out["embedding"].shape == (2,)  # no batch dim left
        assert torch.equal(out["embedding"], expected(ids))

    alone_client = FakeEncoder()
    alone = running(make_service({"r0": alone_client}, size=1))
    for ids, [out] in zip(ROWS[:4], results):
        [ref] = await guarded(alone.run_ids([ids]))
        assert torch.equal(out["embedding"], ref["embedding"])
    assert alone_client.batch_sizes() == [1, 1, 1, 1]


async def test_a_batch_never_exceeds_max_batch_size(running) -> None:
    gate = asyncio.Event()
    client = FakeEncoder(gate=gate)
    service = running(make_service({"r0": client}, size=3, delay=0.0))
    task = asyncio.create_task(service.run_ids([[i + 1] for i in range(7)]))
    await guarded(client.started.wait())
    gate.set()
    out = await guarded(task)
    assert client.batch_sizes() == [3, 3, 1]
    assert [o["embedding"][0].item() for o in out] == [float(i + 1) for i in range(7)]
    assert service.metrics.batch_size.labels("enc")._sum.get() == 7


async def test_length_buckets_keep_long_inputs_out_of_short_batches(running) -> None:
    client = FakeEncoder()
    service = running(make_service({"r0": client}, size=8, delay=0.0, edges=(8, 64)))
    short, long = [[1, 2, 3], [4]], [list(range(1, 21)), list(range(1, 18))]
    out = await guarded(service.run_ids([short[0], long[0], short[1], long[1]]))
    widths = sorted(c["input_ids"].shape for c in client.calls)
    assert widths == [torch.Size([2, 8]), torch.Size([2, 24])]  # rounded up to 8 within each bucket
    for c in client.calls:
        lengths = c["attention_mask"].sum(1).tolist()
        assert all(n <= 8 for n in lengths) or all(n > 8 for n in lengths)
    for ids, o in zip([short[0], long[0], short[1], long[1]], out):
        assert torch.equal(o["embedding"], expected(ids))


async def test_padding_is_right_sided_with_the_pad_id_and_a_zero_mask(running) -> None:
    client = FakeEncoder()
    service = running(make_service({"r0": client}, size=2, delay=60.0))
    await guarded(service.run_ids([[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12]]))
    [call] = client.calls
    assert set(call) == {"input_ids", "attention_mask"}  # no token_type_ids unless the fragment takes them
    assert call["input_ids"].dtype == torch.int64 and call["attention_mask"].dtype == torch.int64
    assert call["input_ids"].tolist() == [[1, 2, 3] + [PAD] * 13, list(range(4, 13)) + [PAD] * 7]
    assert call["attention_mask"].tolist() == [[1] * 3 + [0] * 13, [1] * 9 + [0] * 7]


async def test_token_type_ids_are_zeros_when_the_fragment_takes_them(running) -> None:
    client = FakeEncoder()
    text = TextInputs(pad_id=0, max_length=10, token_type_ids=True)
    service = running(make_service({"r0": client}, size=2, delay=60.0, text=text))
    await guarded(service.run_ids([[1, 2], [3, 4, 5, 6, 7, 8, 9, 10, 11]]))
    [call] = client.calls
    assert set(call) == {"input_ids", "attention_mask", "token_type_ids"}
    assert call["input_ids"].shape == (2, 10)  # rounded to 16, but never past max_length
    assert torch.equal(call["token_type_ids"], torch.zeros(2, 10, dtype=torch.int64))


async def test_a_free_replica_takes_the_next_batch_while_the_other_is_busy(running) -> None:
    gate0 = asyncio.Event()
    busy, free = FakeEncoder(gate=gate0), FakeEncoder()
    service = running(make_service({"r0": busy, "r1": free}, size=2, delay=0.0))
    first = one(service, [1, 2])
    await guarded(busy.started.wait())
    [second] = await guarded(service.run_ids([[3, 4]]))  # r0 is still held: only r1 can answer this
    assert not first.done()
    assert torch.equal(second["embedding"], expected([3, 4]))
    gate0.set()
    [[out]] = [await guarded(first)]
    assert torch.equal(out["embedding"], expected([1, 2]))
    assert busy.rows_sent() == [[1, 2]] and free.rows_sent() == [[3, 4]]


async def test_an_unavailable_replica_is_marked_down_and_its_jobs_move(running) -> None:
    down: list[str] = []
    dead = FakeEncoder(fail_with=Unavailable("worker w-r0 did not answer Infer (connection refused)"))
    good = FakeEncoder()
    service = running(make_service({"r0": dead, "r1": good}, size=4, delay=60.0, down=down))
    results = await guarded(asyncio.gather(*(one(service, ids) for ids in ROWS[:4])))
    for ids, [out] in zip(ROWS[:4], results):
        assert torch.equal(out["embedding"], expected(ids))
    assert dead.batch_sizes() == [4] and sorted(good.rows_sent()) == sorted(ROWS[:4])
    assert down == ["r0"]
    assert not service.replicas["r0"].alive and "connection refused" in service.replicas["r0"].failure
    assert service.metrics.migrations._value.get() == 4
    assert service.metrics.migration_failures._value.get() == 0
    assert service.ready  # r1 still serves


async def test_with_no_moves_allowed_the_jobs_of_a_lost_replica_fail_unavailable(running) -> None:
    dead = FakeEncoder(fail_with=Unavailable("worker w-r0 is gone"))
    good = FakeEncoder()
    service = running(make_service({"r0": dead, "r1": good}, size=2, delay=60.0, migration_limit=0))
    results = await guarded(asyncio.gather(one(service, [1]), one(service, [2]), return_exceptions=True))
    assert all(isinstance(r, Unavailable) and "worker w-r0 is gone" in str(r) for r in results)
    assert good.calls == []
    assert service.metrics.migration_failures._value.get() == 2
    out = await guarded(service.run_ids([[5], [6]]))  # the next batch goes to the replica left
    assert [o["embedding"][0].item() for o in out] == [5.0, 6.0] and good.batch_sizes() == [2]


async def test_the_jobs_of_the_last_replica_fail_rather_than_wait_for_none(running) -> None:
    # Bug found: _retry put them back in the queue after replica_lost had emptied it, with nothing left to
    # run them and no restart coming: they waited forever.
    dead = FakeEncoder(fail_with=Unavailable("worker w-r0 is gone"))
    service = running(make_service({"r0": dead}, size=2, delay=60.0, migration_limit=3))
    results = await guarded(asyncio.gather(one(service, [1]), one(service, [2]), return_exceptions=True))
    assert all(isinstance(r, Unavailable) for r in results)
    assert len(service.batcher) == 0 and await service.wait_idle(GUARD_S)
    with pytest.raises(Unavailable, match="no replica of model 'enc' is alive"):
        await service.run_ids([[3]])


async def test_jobs_wait_for_a_replica_the_supervisor_is_bringing_back(running) -> None:
    dead = FakeEncoder(fail_with=Unavailable("worker w-r0 is gone"))
    service = make_service({"r0": dead}, size=1, delay=0.0, migration_limit=3)
    service.restarting.add("r0")  # as Supervisor.replica_down does
    running(service)
    task = one(service, [4, 5])
    await until(lambda: not service.replicas["r0"].alive and len(service.batcher) == 1)
    fresh = FakeEncoder()
    service.restarting.discard("r0")
    service.replica_back(Replica("r0", [Stage("w-r0", fresh, "frag")], 0, warm=True))
    [out] = await guarded(task)
    assert torch.equal(out["embedding"], expected([4, 5])) and fresh.rows_sent() == [[4, 5]]
    assert service.metrics.restarts.labels("r0")._value.get() == 1


async def test_one_refused_input_fails_alone_and_its_neighbours_succeed(running) -> None:
    client = FakeEncoder()
    service = running(make_service({"r0": client}, size=4, delay=60.0))
    rows = [[1, 2], [3, REFUSED], [5], [6, 7]]
    results = await guarded(asyncio.gather(*(one(service, ids) for ids in rows), return_exceptions=True))
    assert isinstance(results[1], InvalidRequest) and str(results[1]) == f"token id {REFUSED} is outside the vocabulary"
    for i in (0, 2, 3):
        assert torch.equal(results[i][0]["embedding"], expected(rows[i]))
    assert client.batch_sizes() == [4, 1, 1, 1, 1]  # refused whole, then each alone
    assert service.replicas["r0"].alive  # a bad input is no reason to give up a replica


async def test_a_replica_lost_while_isolating_a_refused_batch_still_moves_its_jobs(running) -> None:
    # Bug found: an Unavailable raised by a one-by-one rerun escaped the InvalidRequest handler, so the batch's
    # jobs were never answered.
    calls = []

    def refuse_then_die(inputs: Tensors) -> Tensors:
        calls.append(inputs)
        if len(calls) > 1:
            raise Unavailable("worker w-r0 crashed")
        return answer(inputs)

    flaky, good = FakeEncoder(outputs=refuse_then_die), FakeEncoder()
    service = running(make_service({"r0": flaky, "r1": good}, size=3, delay=60.0))
    rows = [[1], [REFUSED], [3]]
    results = await guarded(asyncio.gather(*(one(service, ids) for ids in rows), return_exceptions=True))
    assert isinstance(results[1], InvalidRequest)
    assert torch.equal(results[0][0]["embedding"], expected([1]))
    assert torch.equal(results[2][0]["embedding"], expected([3]))
    assert not service.replicas["r0"].alive


async def test_a_replica_reported_lost_while_isolating_moves_the_jobs_left(running) -> None:
    class RefuseThenHang(FakeEncoder):
        async def infer(self, fragment_id, inputs, timeout=None):
            if self.calls:  # the one-by-one reruns hang: the worker stopped
                self.gate = asyncio.Event()
            return await super().infer(fragment_id, inputs, timeout)

    flaky, good = RefuseThenHang(), FakeEncoder()
    service = running(make_service({"r0": flaky, "r1": good}, size=3, delay=60.0))
    rows = [[1], [REFUSED], [3]]
    tasks = [one(service, ids) for ids in rows]
    await until(lambda: len(flaky.calls) == 2)
    service.replica_lost("r0", "worker w-r0 stopped answering its health check")
    results = await guarded(asyncio.gather(*tasks, return_exceptions=True))
    assert isinstance(results[1], InvalidRequest)
    assert torch.equal(results[0][0]["embedding"], expected([1]))
    assert torch.equal(results[2][0]["embedding"], expected([3]))
    assert flaky.cancelled == 1 and good.batch_sizes()[0] == 3  # all three moved, the bad one refused again


async def test_outputs_without_a_row_per_job_fail_the_batch_instead_of_hanging(running) -> None:
    def one_row(inputs: Tensors) -> Tensors:
        return {"embedding": torch.zeros(1, 2)}

    service = running(make_service({"r0": FakeEncoder(outputs=one_row)}, size=2, delay=60.0))
    results = await guarded(asyncio.gather(one(service, [1]), one(service, [2]), return_exceptions=True))
    assert isinstance(results[1], IndexError)
    assert await service.wait_idle(GUARD_S)


async def test_a_cancelled_request_leaves_the_queue_and_is_never_sent(running) -> None:
    gate = asyncio.Event()
    client = FakeEncoder(gate=gate)
    service = running(make_service({"r0": client}, size=4, delay=0.0))
    first = one(service, [1])
    await guarded(client.started.wait())
    gone = one(service, [2, 2])
    await until(lambda: len(service.batcher) == 1)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert len(service.batcher) == 0
    gate.set()
    await guarded(first)
    [out] = await guarded(service.run_ids([[3]]))
    assert torch.equal(out["embedding"], expected([3]))
    assert client.rows_sent() == [[1], [3]]
    assert await service.wait_idle(GUARD_S)


async def test_a_full_queue_refuses_with_429_and_harms_no_one(running) -> None:
    gate = asyncio.Event()
    client = FakeEncoder(gate=gate)
    service = running(make_service({"r0": client}, size=2, delay=0.0, queue=2))
    first = one(service, [1])
    await guarded(client.started.wait())
    waiting = [one(service, [2]), one(service, [3])]
    await until(lambda: len(service.batcher) == 2)
    with pytest.raises(ResourceExhausted, match="queue is full") as refused:
        await service.run_ids([[4]])
    assert refused.value.http_status == 429
    assert len(service.batcher) == 2
    gate.set()
    results = await guarded(asyncio.gather(first, *waiting))
    assert [r[0]["embedding"][0].item() for r in results] == [1.0, 2.0, 3.0]
    assert client.rows_sent() == [[1], [2], [3]]


async def test_drain_refuses_new_requests_and_waits_for_the_running_ones(running) -> None:
    gate = asyncio.Event()
    client = FakeEncoder(gate=gate)
    service = running(make_service({"r0": client}, size=2, delay=0.0))
    assert await service.wait_idle(GUARD_S)
    task = one(service, [1, 2])
    await guarded(client.started.wait())
    service.stop_accepting()
    assert not service.ready and "the server is shutting down" in service.not_ready_reasons()
    with pytest.raises(Unavailable, match="takes no new requests"):
        await service.run_ids([[3]])
    assert not await service.wait_idle(0.01)  # the running batch holds it
    gate.set()
    assert await service.wait_idle(GUARD_S)
    [out] = await guarded(task)
    assert torch.equal(out["embedding"], expected([1, 2]))


async def test_abort_all_fails_waiting_and_running_requests_unavailable(running) -> None:
    gate = asyncio.Event()
    client = FakeEncoder(gate=gate)
    service = running(make_service({"r0": client}, size=1, delay=0.0))
    run = one(service, [1])
    await guarded(client.started.wait())
    waits = [one(service, [2]), one(service, [3])]
    await until(lambda: len(service.batcher) == 2)
    service.stop_accepting()
    service.abort_all("the grace period is over")
    results = await guarded(asyncio.gather(run, *waits, return_exceptions=True))
    assert all(isinstance(r, Unavailable) for r in results)
    assert [str(r) for r in results[1:]] == ["the grace period is over"] * 2
    assert client.cancelled == 1 and client.rows_sent() == [[1]]
    assert await service.wait_idle(GUARD_S)


async def test_a_replica_reported_lost_gives_up_its_batch_and_the_jobs_move(running) -> None:
    down: list[str] = []
    hung = FakeEncoder(gate=asyncio.Event())  # never opens: a SIGSTOPped worker
    good = FakeEncoder()
    service = running(make_service({"r0": hung, "r1": good}, size=3, delay=60.0, down=down))
    tasks = [one(service, ids) for ids in ROWS[:3]]
    await guarded(hung.started.wait())
    service.replica_lost("r0", "worker w-r0 stopped answering its health check")
    results = await guarded(asyncio.gather(*tasks))
    for ids, [out] in zip(ROWS[:3], results):
        assert torch.equal(out["embedding"], expected(ids))
    assert hung.cancelled == 1 and down == ["r0"]
    assert service.replicas["r0"].failure == "worker w-r0 stopped answering its health check"
    assert sorted(good.rows_sent()) == sorted(ROWS[:3])
    service.replica_lost("r0", "again")  # a second report of a replica already down changes nothing
    assert down == ["r0"]


async def test_tensor_jobs_stack_into_one_batch_and_split_back(running) -> None:
    client = FakeEncoder()
    service = running(make_service({"r0": client}, size=3, delay=60.0, text=None))
    service.text = None
    xs = [torch.full((1, 4), float(i)) + torch.arange(4.0) for i in range(3)]
    results = await guarded(asyncio.gather(*(service.run_tensors([{"x": x}]) for x in xs)))
    [call] = client.calls
    assert call["x"].shape == (3, 4)
    for x, [out] in zip(xs, results):
        assert out["y"].shape == (4,) and torch.equal(out["y"], x[0] * 2)
    with pytest.raises(InvalidRequest, match="takes tensors, not text"):
        await service.run_ids([[1]])


async def test_tensors_of_different_shapes_each_get_their_answer(running) -> None:
    client = FakeEncoder()
    service = running(make_service({"r0": client}, size=2, delay=60.0))
    a, b = torch.ones(1, 3), torch.arange(5.0).reshape(1, 5)
    results = await guarded(asyncio.gather(service.run_tensors([{"x": a}]), service.run_tensors([{"x": b}])))
    assert torch.equal(results[0][0]["y"], a[0] * 2) and torch.equal(results[1][0]["y"], b[0] * 2)
    assert [tuple(c["x"].shape) for c in client.calls] == [(1, 3), (1, 5)]  # never stacked together


async def test_a_tensor_without_a_leading_batch_of_one_is_refused(running) -> None:
    # Bug found: a [2, ...] input was stacked as two rows, so every later job in its batch got its neighbour's
    # answer.
    client = FakeEncoder()
    service = running(make_service({"r0": client}, size=2, delay=60.0))
    with pytest.raises(InvalidRequest, match=r"rows\[1\]\['x'\] has shape \[2, 3\]"):
        await service.run_tensors([{"x": torch.ones(1, 3)}, {"x": torch.ones(2, 3)}])
    assert client.calls == [] and len(service.batcher) == 0


def scores(inputs: Tensors) -> Tensors:
    """A CLIP-like output: every row scored against every row of its batch, [N, N]."""
    x = inputs["x"]
    return {"scores": x @ x.T, "y": x * 2}


async def test_whole_requests_run_alone_even_when_in_flight_together(running) -> None:
    client = FakeEncoder(outputs=scores)
    service = running(make_service({"r0": client}, size=4, delay=60.0, whole=True))  # no wait for company
    a, b = torch.arange(6.0).reshape(2, 3), -torch.arange(9.0).reshape(3, 3)
    results = await guarded(asyncio.gather(service.run_tensors([{"x": r[None]} for r in a]),
                                           service.run_tensors([{"x": r[None]} for r in b])))
    assert sorted(client.batch_sizes()) == [2, 3]  # one forward per request, all its rows in it
    for x, rows in zip((a, b), results):
        assert torch.equal(torch.stack([r["scores"] for r in rows]), x @ x.T)
        assert torch.equal(torch.stack([r["y"] for r in rows]), x * 2)


async def test_a_whole_request_with_rows_of_two_shapes_is_refused(running) -> None:
    client = FakeEncoder(outputs=scores)
    service = running(make_service({"r0": client}, whole=True))
    with pytest.raises(InvalidRequest, match="rows need the same inputs, of one shape"):
        await guarded(service.run_tensors([{"x": torch.ones(1, 3)}, {"x": torch.ones(1, 4)}]))
    assert client.calls == []
