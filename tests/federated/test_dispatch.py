"""Planning a round's clients onto runners: balance, batches, and a batch's failures."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from federated.client import balance, batch_plan, batch_sizes, train_batch
from federated.messages import ClientTask, ClientUpdate, TrainedBatch
from qfl.errors import TrainingError


def test_balance_puts_the_longest_tasks_first_on_the_least_loaded_worker() -> None:
    # LPT: 7 -> w0, 5 -> w1, 4 -> w1 (5 < 7), 3 -> w0 (7 < 9), 1 -> w1 (9 < 10)
    assert balance([3, 7, 1, 5, 4], 2) == [0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="at least one worker"):
        balance([1.0], 0)


@pytest.mark.parametrize(
    ("n", "sizes"),
    [(0, []), (1, [1]), (2, [1, 1]), (3, [2, 1]), (8, [4, 2, 1, 1]), (50, [25, 13, 6, 3, 2, 1])],
)
def test_batch_sizes_halve_down_to_a_last_batch_of_one(n: int, sizes: list[int]) -> None:
    assert batch_sizes(n) == sizes


@given(st.integers(min_value=1, max_value=10_000))
def test_batch_sizes_cover_every_task_in_about_log2_n_calls(n: int) -> None:
    sizes = batch_sizes(n)
    assert sum(sizes) == n and sizes[-1] == 1
    assert sizes == sorted(sizes, reverse=True)
    assert len(sizes) <= int(np.log2(n)) + 2


@given(
    st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=300),
)
def test_batch_plan_sends_each_task_once_to_its_planned_worker_in_order(plan: list[int]) -> None:
    workers = max(plan) + 1
    batches = batch_plan(plan, workers)
    sent = [i for _, batch in batches for i in batch]
    assert sorted(sent) == list(range(len(plan)))
    for worker, batch in batches:
        assert batch and all(plan[i] == worker for i in batch)
    for worker in range(workers):  # a worker's tasks keep their order across its batches
        mine = [i for w, batch in batches if w == worker for i in batch]
        assert mine == [i for i, w in enumerate(plan) if w == worker]
    # every worker's first batch is submitted before any worker's second one
    firsts = {}
    for position, (worker, _) in enumerate(batches):
        firsts.setdefault(worker, position)
    assert sorted(firsts.values()) == list(range(len(firsts)))


def test_a_hundred_clients_on_two_runners_take_twelve_calls() -> None:
    batches = batch_plan(balance([1.0] * 100, 2), 2)
    assert len(batches) == 12
    assert [len(b) for _, b in batches[:2]] == [25, 25]
    assert [len(b) for _, b in batches[-2:]] == [1, 1]


def _task(k: int) -> ClientTask:
    return ClientTask(client_id=k, round=3, seed=k)


def _update(task: ClientTask) -> ClientUpdate:
    return ClientUpdate(
        client_id=task.client_id,
        round=task.round,
        num_samples=10,
        loss=0.5,
        delta=np.full(4, task.client_id, np.float32),
        seconds=0.0,
    )


def test_a_client_that_raises_fails_alone_and_its_batch_goes_on() -> None:
    def train(task: ClientTask) -> ClientUpdate:
        if task.client_id == 7:
            raise TrainingError("client 7 is not registered")
        if task.client_id == 9:
            raise ZeroDivisionError("division by zero")
        return _update(task)

    batch = train_batch([_task(k) for k in (4, 7, 2, 9, 5)], train)
    assert [u.client_id for u in batch.updates] == [4, 2, 5]
    assert [(f.client_id, f.round, f.reason) for f in batch.failures] == [
        (7, 3, "TrainingError: client 7 is not registered"),
        (9, 3, "ZeroDivisionError: division by zero"),
    ]


def test_a_cancelled_batch_is_not_turned_into_failures() -> None:
    def train(task: ClientTask) -> ClientUpdate:
        raise KeyboardInterrupt  # how Ray cancels a running task

    with pytest.raises(KeyboardInterrupt):
        train_batch([_task(1)], train)


def test_a_batch_reason_is_cut_at_500_characters() -> None:
    def train(task: ClientTask) -> ClientUpdate:
        raise TrainingError("x" * 1000)

    (failure,) = train_batch([_task(1)], train).failures
    assert len(failure.reason) == 500 and failure.reason.startswith("TrainingError: xxx")
    assert TrainedBatch().updates == () and TrainedBatch().failures == ()
