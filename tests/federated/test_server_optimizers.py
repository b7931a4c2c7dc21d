"""Server optimizers FedAdagrad, FedYogi, FedAdam (Reddi et al. 2021, Algorithm 2), by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from federated.aggregate import AggregationConfig, Aggregator, ServerOptimizer
from federated.messages import ClientUpdate
from qfl.errors import TrainingError


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def optimizer(kind: str, **fields) -> ServerOptimizer:
    return ServerOptimizer(AggregationConfig(server_optimizer=kind, **fields))


def test_fedadagrad_two_steps_exact() -> None:
    """tau = 1.5, beta1 = 0.5, eta = 1; numbers chosen so every step is exact in binary.

    coordinate 0: Delta = 2, 6          coordinate 1: Delta = -2, 0
    step 1: m = 0.5 * 2 = 1             m = -1
            v = 1.5^2 + 2^2 = 6.25      v = 6.25
            w = 0 + 1 / (2.5 + 1.5)     w = 0 - 1 / 4
              = 0.25                      = -0.25
    step 2: m = 0.5 * 1 + 0.5 * 6 = 3.5 m = -0.5
            v = 6.25 + 36 = 42.25       v = 6.25
            w = 0.25 + 3.5 / (6.5 + 1.5) w = -0.25 - 0.5 / 4
              = 0.6875                    = -0.375
    """
    opt = optimizer("fedadagrad", server_lr=1.0, beta1=0.5, tau=1.5)
    w1 = opt.step(f32(0, 0), f32(2, -2))
    np.testing.assert_array_equal(w1, f32(0.25, -0.25))
    w2 = opt.step(w1, f32(6, 0))
    np.testing.assert_array_equal(w2, f32(0.6875, -0.375))
    np.testing.assert_array_equal(opt.m, [3.5, -0.5])
    np.testing.assert_array_equal(opt.v, [42.25, 6.25])
    assert opt.steps == 2


# eta = 0.1, beta1 = 0.9, beta2 = 0.99, tau = 1e-3 (Reddi et al.'s defaults); w0 = (1, 1)
# Delta_1 = (1, -2), Delta_2 = (0.5, 0.05): for Yogi, Delta_2^2 = 0.25 exceeds v_1[0] ~ 0.01
# (v grows) while 0.0025 is below v_1[1] ~ 0.04 (v shrinks), so both signs are exercised.
ETA, B1, B2, TAU = 0.1, 0.9, 0.99, 1e-3
D1, D2 = (1.0, -2.0), (0.5, 0.05)


def _by_hand(kind: str) -> tuple[list[float], list[float]]:
    w1, w2 = [], []
    for i in range(2):
        m1 = 0.1 * D1[i]  # (1 - beta1) * Delta_1, m_0 = 0
        v0 = TAU**2
        # adam: b2 v0 + (1 - b2) d^2; yogi: v0 - (1 - b2) d^2 sign(v0 - d^2), with d^2 > v0 here
        v1 = (B2 * v0 if kind == "fedadam" else v0) + 0.01 * D1[i] ** 2
        x1 = 1.0 + ETA * m1 / (math.sqrt(v1) + TAU)
        m2 = B1 * m1 + 0.1 * D2[i]
        if kind == "fedadam":
            v2 = B2 * v1 + 0.01 * D2[i] ** 2
        elif i == 0:  # v1 = 0.010001 < 0.25: sign -1, v grows
            v2 = v1 + 0.01 * D2[i] ** 2
        else:  # v1 = 0.040001 > 0.0025: sign +1, v shrinks
            v2 = v1 - 0.01 * D2[i] ** 2
        w1.append(x1)
        w2.append(x1 + ETA * m2 / (math.sqrt(v2) + TAU))
    return w1, w2


@pytest.mark.parametrize("kind", ["fedadam", "fedyogi"])
def test_adam_and_yogi_two_steps_by_hand(kind: str) -> None:
    opt = optimizer(kind, server_lr=ETA, beta1=B1, beta2=B2, tau=TAU)
    expected1, expected2 = _by_hand(kind)
    w1 = opt.step(f32(1, 1), f32(*D1))
    np.testing.assert_allclose(w1, expected1, rtol=1e-6)
    w2 = opt.step(w1, f32(*D2))
    # the optimizer steps from float32 w1; compare with the hand value from the same start
    np.testing.assert_allclose(w2, np.float32(w1) + (np.array(expected2) - expected1), rtol=1e-6)


def test_adam_and_yogi_differ_where_yogi_shrinks_v() -> None:
    adam = optimizer("fedadam", server_lr=ETA, beta1=B1, beta2=B2, tau=TAU)
    yogi = optimizer("fedyogi", server_lr=ETA, beta1=B1, beta2=B2, tau=TAU)
    for opt in (adam, yogi):
        opt.step(f32(1, 1), f32(*D1))
        opt.step(f32(1, 1), f32(*D2))
    # coordinate 1: adam decays v by beta2 (0.99 * 0.040001 + 0.01 * 0.0025), yogi subtracts
    assert adam.v[1] == pytest.approx(0.99 * (0.99e-6 + 0.04) + 0.01 * 0.0025, rel=1e-12)
    assert yogi.v[1] == pytest.approx(1e-6 + 0.04 - 0.01 * 0.0025, rel=1e-12)


def test_first_adam_step_is_about_eta_times_sign() -> None:
    """With v_0 = tau^2 tiny, step 1 is eta (1 - b1) / sqrt(1 - b2) per coordinate: sign-like."""
    opt = optimizer("fedadam", server_lr=0.01, beta1=0.9, beta2=0.99, tau=1e-9)
    w = opt.step(f32(0, 0, 0), f32(1e-3, -5.0, 2.0))
    np.testing.assert_allclose(w, 0.01 * 0.1 / 0.1 * np.array([1, -1, 1]), rtol=1e-5)


def test_none_is_the_plain_step() -> None:
    opt = optimizer("none", server_lr=0.5)
    np.testing.assert_array_equal(opt.step(f32(1, 2), f32(2, -2)), f32(2, 1))
    assert opt.m is None and opt.v is None


def test_state_round_trip_resumes_identically() -> None:
    rng = np.random.default_rng(0)
    deltas = rng.standard_normal((5, 10)).astype(np.float32)
    a = optimizer("fedyogi", server_lr=0.05)
    w = np.zeros(10, np.float32)
    for d in deltas[:3]:
        w = a.step(w, d)
    b = optimizer("fedyogi", server_lr=0.05)
    b.load_state(a.state())
    wa, wb = w, w.copy()
    for d in deltas[3:]:
        wa, wb = a.step(wa, d), b.step(wb, d)
    assert wa.tobytes() == wb.tobytes()
    assert b.steps == 5


def test_state_is_a_copy_and_kind_is_checked() -> None:
    a = optimizer("fedadam", server_lr=0.05)
    a.step(f32(0, 0), f32(1, 1))
    state = a.state()
    state["m"][0] = 99.0
    assert a.m[0] != 99.0
    with pytest.raises(TrainingError, match="fedadam"):
        optimizer("fedyogi", server_lr=0.05).load_state(state)


def test_step_shape_mismatch() -> None:
    with pytest.raises(TrainingError, match="shape"):
        optimizer("fedadam", server_lr=0.1).step(f32(0, 0), f32(1, 2, 3))


def test_aggregator_keeps_optimizer_state_across_rounds() -> None:
    """Two rounds through Aggregator equal the hand-computed FedAdagrad steps above."""
    config = AggregationConfig(server_optimizer="fedadagrad", server_lr=1.0, beta1=0.5, tau=1.5)
    aggregator = Aggregator(config)

    def updates(*deltas):
        return [
            ClientUpdate(client_id=k, round=0, num_samples=1, loss=0.0, delta=d, seconds=0.0)
            for k, d in enumerate(deltas)
        ]

    w1, _ = aggregator.step(f32(0, 0), updates(f32(1, -3), f32(3, -1)))  # mean (2, -2)
    w2, _ = aggregator.step(w1, updates(f32(6, 1), f32(6, -1)))  # mean (6, 0)
    np.testing.assert_array_equal(w1, f32(0.25, -0.25))
    np.testing.assert_array_equal(w2, f32(0.6875, -0.375))
