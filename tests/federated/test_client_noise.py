"""The noise variance a quantum update carries to the hybrid rule (Eq. 6-7)."""

from __future__ import annotations

import pytest

from federated.client import mitigation_variance_factor, update_noise_variance
from quantum.config import MitigationConfig


def test_shot_noise_variance_bound_and_fidelity_inflation():
    # lr^2 * steps / (2 * shots * F^2)
    assert update_noise_variance(1000, 0.1, 20, 1.0) == pytest.approx(0.01 * 20 / 2000)
    assert update_noise_variance(1000, 0.1, 20, 0.5) == pytest.approx(4 * 0.01 * 20 / 2000)
    assert update_noise_variance(None, 0.1, 20) == 0.0  # exact simulation: no shot noise
    assert update_noise_variance(4000, 0.1, 20) == update_noise_variance(1000, 0.1, 20) / 4


@pytest.mark.parametrize(
    ("mitigation", "factor"),
    [
        (MitigationConfig(), 1.0),
        (MitigationConfig(techniques=("readout",)), 1.0),
        # Richardson at 1, 3, 5: c = (15, -10, 3) / 8, sum c^2 = 334 / 64
        (MitigationConfig(techniques=("zne",)), 334 / 64),
        (MitigationConfig(techniques=("zne",), scale_factors=(1.0, 3.0)), 2.5),
    ],
)
def test_zero_noise_extrapolation_amplifies_the_variance(mitigation, factor):
    assert mitigation_variance_factor(mitigation) == pytest.approx(factor)
