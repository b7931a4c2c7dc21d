"""The client pool on a real local Ray: results, failures as data, deadlines."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from actors.pool import ClientPool
from federated.client import ClientRunner
from federated.config import ModelConfig, TrainConfig
from federated.data import build_federated_data
from federated.messages import ClientTask, TrainedBatch
from federated.models import build_model, get_flat

pytestmark = pytest.mark.usefixtures("ray_local")

MODEL = ModelConfig(hidden=(8,))
TRAIN = TrainConfig(epochs=1, batch_size=16)


@pytest.fixture(scope="module")
def setup():
    data = build_federated_data("iris", n_clients=6, partition="iid", seed=0)
    pool = ClientPool.from_data(data, MODEL, TRAIN, runners=2, num_cpus=0.5)
    pool.wait_ready(timeout_s=120)
    weights = get_flat(build_model(MODEL, data.input_shape, data.num_classes, seed=0))
    return data, pool, weights


def _tasks(ids, round_=0):
    return [ClientTask(client_id=k, round=round_, seed=100 + k) for k in ids]


def test_round_returns_the_same_updates_as_local_training(setup):
    data, pool, weights = setup
    result = pool.run_round(ray.put(weights), _tasks([4, 0, 2]), timeout_s=120)
    assert [u.client_id for u in result.updates] == [0, 2, 4]
    assert result.failures == []
    local = ClientRunner(data, MODEL, TRAIN)
    for update in result.updates:
        expected = local.run(_tasks([update.client_id])[0], weights)
        np.testing.assert_array_equal(update.delta, expected.delta)
        assert update.num_samples == len(data.client_indices[update.client_id])


def test_failing_client_is_recorded_and_round_completes(setup):
    _, pool, weights = setup
    result = pool.run_round(ray.put(weights), _tasks([1, 99, 3]), timeout_s=120)
    assert [u.client_id for u in result.updates] == [1, 3]
    assert [f.client_id for f in result.failures] == [99]
    assert "not registered" in result.failures[0].reason


def test_the_runners_answers_are_the_rounds_parts_in_fewer_calls_than_clients(setup):
    _, pool, weights = setup
    seen = []
    tasks = _tasks([5, 1, 99, 3, 0, 2, 4])
    result = pool.run_round(ray.put(weights), tasks, timeout_s=120, on_part=seen.append)
    assert seen == result.parts and 1 < len(result.parts) < len(tasks)
    batches = ray.get(result.parts)
    assert all(isinstance(b, TrainedBatch) for b in batches)
    in_parts = sorted(u.client_id for b in batches for u in b.updates)
    assert in_parts == [u.client_id for u in result.updates] == [0, 1, 2, 3, 4, 5]
    assert [f.client_id for f in result.failures] == [99]  # its batch's others trained


def test_deadline_turns_stragglers_into_failures_without_hanging(setup):
    _, pool, weights = setup
    result = pool.run_round(ray.put(weights), _tasks(range(6)), timeout_s=1e-6)
    assert len(result.updates) + len(result.failures) == 6
    assert result.failures, "a deadline of 1 microsecond must leave clients unanswered"
    assert all("timeout" in f.reason for f in result.failures)


def test_a_runner_killed_mid_round_turns_its_clients_into_failures():
    """Issue 9: kill one runner actor by its handle while its clients train."""
    data = build_federated_data("digits", n_clients=8, partition="iid", seed=0)
    model = ModelConfig(hidden=(64,))
    train = TrainConfig(epochs=300, batch_size=8)  # seconds per client: killed in the middle
    pool = ClientPool.from_data(data, model, train, runners=2, num_cpus=0.5)
    pool.wait_ready(timeout_s=120)
    weights = get_flat(build_model(model, data.input_shape, data.num_classes, seed=0))
    victim = pool.actors[1]
    killer = _kill_later(victim, delay_s=1.5)
    result = pool.run_round(ray.put(weights), _tasks(range(8)), timeout_s=240)
    ray.get(killer)
    assert len(result.updates) + len(result.failures) == 8
    assert result.failures, "the killed runner's clients must be recorded as failed"
    assert all("Actor" in f.reason or "actor" in f.reason for f in result.failures)
    assert result.updates, "the surviving runner's clients still train"


def _kill_later(actor, delay_s: float):
    @ray.remote(num_cpus=0)
    def kill(handles, delay):
        import time

        time.sleep(delay)
        ray.kill(handles[0], no_restart=True)

    return kill.remote([actor], delay_s)
