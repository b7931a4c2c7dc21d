"""Layerwise aggregation of quantum layers of different depths (federated/layerwise.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from federated.config import ModelConfig, TrainConfig
from federated.layerwise import aggregate_layers, layer_mask, masked_average
from federated.models import build_model, get_flat, set_layers_active, trained_mask
from federated.train import local_train
from qfl.errors import TrainingError
from quantum.config import QuantumConfig


def test_each_layer_averages_over_the_clients_that_hold_it():
    # L = 3 layers of n = 2; client depths 3, 1, 2; weights 1, 2, 1
    a = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    b = np.array([[7.0, 8.0]])
    c = np.array([[-1.0, 0.0], [9.0, 10.0]])
    got = aggregate_layers([a, b, c], [1.0, 2.0, 1.0], num_layers=3)
    expected = np.array(
        [
            [(1 + 2 * 7 - 1) / 4, (2 + 2 * 8 + 0) / 4],  # all three hold layer 0
            [(3 + 9) / 2, (4 + 10) / 2],  # a and c hold layer 1
            [5.0, 6.0],  # only a holds layer 2
        ]
    )
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_a_layer_nobody_holds_keeps_the_base():
    base = np.array([[0.0, 0.0], [0.5, -0.5], [2.0, 3.0]])
    got = aggregate_layers([np.ones((1, 2)), 3 * np.ones((2, 2))], [3.0, 1.0], 3, base=base)
    np.testing.assert_allclose(got, [[1.5, 1.5], [3.0, 3.0], [2.0, 3.0]])
    zeros = aggregate_layers([np.ones((1, 2))], [1.0], 2)
    np.testing.assert_array_equal(zeros, [[1.0, 1.0], [0.0, 0.0]])


def test_equal_depths_reduce_to_the_weighted_mean():
    rng = np.random.default_rng(0)
    layers = [rng.normal(size=(3, 4)) for _ in range(4)]
    weights = [1.0, 2.0, 3.0, 4.0]
    np.testing.assert_allclose(
        aggregate_layers(layers, weights, 3), np.average(layers, axis=0, weights=weights)
    )


def test_masked_average_on_known_vectors():
    updates = np.array([[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]], dtype=np.float32)
    masks = np.array([[True, True, False], [True, False, False]])
    got = masked_average(updates, [1.0, 3.0], masks, base=-1.0)
    np.testing.assert_allclose(got, [(1 + 15) / 4, 2.0, -1.0])
    assert got.dtype == np.float32
    # a holder of weight 0 does not count
    np.testing.assert_allclose(masked_average(updates, [0.0, 1.0], masks), [5.0, 0.0, 0.0])


def test_layer_mask_and_input_checks():
    np.testing.assert_array_equal(layer_mask(3, 2, 2), [True] * 4 + [False] * 2)
    with pytest.raises(TrainingError, match="layers_active"):
        layer_mask(3, 2, 4)
    with pytest.raises(TrainingError, match="line up"):
        masked_average(np.ones((2, 3)), [1.0], np.ones((2, 3), dtype=bool))
    with pytest.raises(TrainingError, match=">= 0"):
        masked_average(np.ones((1, 3)), [-1.0], np.ones((1, 3), dtype=bool))
    with pytest.raises(TrainingError, match="L_k <= 2"):
        aggregate_layers([np.ones((3, 2))], [1.0], 2)
    with pytest.raises(TrainingError, match="no client"):
        aggregate_layers([], [], 2)


def test_a_shallow_client_leaves_the_layers_it_did_not_train_unchanged():
    quantum = QuantumConfig(qubits=3, layers=3, entanglement="ring")
    model = build_model(ModelConfig(kind="vqc"), (3,), 2, seed=0, quantum=quantum)
    start = get_flat(model)
    set_layers_active(model, 1)
    mask = trained_mask(model)
    theta = slice(0, 9)  # state_dict order: quantum.theta first, then the readout
    np.testing.assert_array_equal(mask[theta], [True] * 3 + [False] * 6)
    assert mask[9:].all()
    rng = np.random.default_rng(1)
    data_x = rng.normal(size=(16, 3)).astype(np.float32)
    data_y = (data_x[:, 0] > 0).astype(np.int64)
    from federated.data import ArrayDataset

    result = local_train(
        model,
        ArrayDataset(data_x, data_y),
        start,
        TrainConfig(optimizer="adam", lr=0.1, batch_size=8),
        seed=0,
    )
    assert np.all(result.delta[theta][3:] == 0.0)  # layers 1 and 2 untouched
    assert np.abs(result.delta[theta][:3]).sum() > 0 and np.abs(result.delta[9:]).sum() > 0
    # the aggregate of a full-depth and this client: layers 1, 2 from the full client only
    full = np.zeros_like(start)
    full[theta] = 1.0
    got = masked_average([result.delta, full], [1.0, 1.0], [mask, np.ones_like(mask)])
    np.testing.assert_allclose(got[theta][3:], 1.0)
    np.testing.assert_allclose(got[theta][:3], (result.delta[theta][:3] + 1.0) / 2, rtol=1e-6)
    set_layers_active(model, None)
    assert trained_mask(model).all()
    assert torch.equal(model.quantum.active_theta, model.quantum.theta)
