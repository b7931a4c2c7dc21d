"""Energy and CO2 of a round from CPU time, shots and the power model."""

from __future__ import annotations

import numpy as np
import pytest

from federated.energy import (
    EnergyConfig,
    RoundEnergy,
    co2_kg,
    cpu_joules,
    energy_metrics,
    kwh,
    round_energy,
)
from federated.messages import ClientUpdate


def _update(client_id, seconds, path="classical", shots=0, resource=None) -> ClientUpdate:
    return ClientUpdate(
        client_id=client_id,
        round=0,
        num_samples=10,
        loss=0.1,
        delta=np.zeros(3, dtype=np.float32),
        seconds=seconds,
        path=path,
        shots=shots,
        resource=resource,
    )


def test_an_hour_of_one_core_at_15_watts():
    joules = cpu_joules(3600.0, cores=1.0, watts_per_core=15.0)
    assert joules == 54_000.0
    assert kwh(joules) == pytest.approx(0.015)
    assert co2_kg(0.015, 400.0) == pytest.approx(0.006)  # 6 g at 400 g/kWh


def test_round_energy_by_path_shots_and_server():
    config = EnergyConfig(
        watts_per_core=20.0,
        client_cores=2.0,
        server_cores=1.0,
        pue=1.5,
        joules_per_shot=0.0,
        resource_joules_per_shot={"qpu": 2.5},
    )
    updates = [
        _update(0, 120.0),  # classical
        _update(1, 60.0, path="fallback", resource="qpu"),  # fell back: classical energy
        _update(2, 240.0, path="quantum", shots=10_000, resource="qpu"),
        _update(3, 30.0, path="quantum", shots=1_000, resource="aer_sim"),  # simulator: 0 J
    ]
    energy = round_energy(config, updates, server_seconds=10.0)
    assert energy.classical_kwh == pytest.approx((120 + 60) * 2 * 20 / 3.6e6 * 1.5)
    assert energy.quantum_sim_kwh == pytest.approx((240 + 30) * 2 * 20 / 3.6e6 * 1.5)
    assert energy.quantum_resource_kwh == pytest.approx(10_000 * 2.5 / 3.6e6 * 1.5)
    assert energy.server_kwh == pytest.approx(10 * 1 * 20 / 3.6e6 * 1.5)
    total = (180 * 40 + 270 * 40 + 25_000 + 200) / 3.6e6 * 1.5
    assert energy.kwh == pytest.approx(total)
    assert energy.co2_kg(400.0) == pytest.approx(total * 0.4)


def test_joules_per_shot_default_and_per_resource():
    config = EnergyConfig(joules_per_shot=0.1, resource_joules_per_shot={"qpu": 3.0})
    assert config.shot_joules("qpu") == 3.0
    assert config.shot_joules("other") == 0.1
    assert config.shot_joules(None) == 0.1


def test_no_updates_is_only_the_server():
    energy = round_energy(EnergyConfig(), [], server_seconds=360.0)
    assert energy.kwh == pytest.approx(360 * 15 / 3.6e6)
    assert energy.classical_kwh == energy.quantum_sim_kwh == energy.quantum_resource_kwh == 0.0


def test_metrics_name_every_part_and_the_running_totals():
    energy = RoundEnergy(
        classical_kwh=0.001, quantum_sim_kwh=0.002, quantum_resource_kwh=0.0, server_kwh=0.0005
    )
    metrics = energy_metrics(energy, grid_g_per_kwh=500.0, total_kwh=0.01)
    assert metrics == pytest.approx(
        {
            "energy.kwh": 0.0035,
            "energy.co2_kg": 0.00175,
            "energy.classical_kwh": 0.001,
            "energy.quantum_sim_kwh": 0.002,
            "energy.quantum_resource_kwh": 0.0,
            "energy.server_kwh": 0.0005,
            "energy.total_kwh": 0.01,
            "energy.total_co2_kg": 0.005,
        }
    )


def test_a_pue_below_one_is_rejected():
    with pytest.raises(ValueError, match="pue"):
        EnergyConfig(pue=0.9)
