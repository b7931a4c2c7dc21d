"""QuantumConfig validation, the Eq. 2 penalty and circuit fidelity, hybrid and VQC models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from federated.config import ModelConfig
from federated.models import build_model, get_flat
from qfl.errors import QuantumError, TrainingError
from quantum.circuits import build_circuit
from quantum.config import CircuitConfig, NoiseConfig, QuantumConfig
from quantum.layer import QuantumLayer, circuit_fidelity


def test_config_rejects_noise_on_a_noiseless_executor():
    with pytest.raises(ValidationError, match="noiseless"):
        QuantumConfig(executor="exact", noise=NoiseConfig(kind="parametric", p1=0.01, p2=0.01))


def test_config_requires_a_backend_for_ibm():
    with pytest.raises(ValidationError, match="quantum.backend"):
        QuantumConfig(executor="ibm")


def test_circuit_config_is_the_quantum_configs_circuit_part():
    config = QuantumConfig(qubits=3, layers=2, entanglement="ring", reupload=True)
    assert config.circuit_config() == CircuitConfig(
        qubits=3, layers=2, entanglement="ring", reupload=True
    )


def test_fidelity_is_the_product_over_gates_and_readouts():
    # 3 qubits, 1 layer, linear: 3 encoding RY + 3 RY + 2 CNOT, 3 readouts.
    circuit = build_circuit(CircuitConfig(qubits=3, layers=1, entanglement="linear"))
    noise = NoiseConfig(kind="parametric", p1=0.01, p2=0.05, readout=0.02)
    expected = (1 - 0.01) ** 6 * (1 - 0.05) ** 2 * (1 - 0.02) ** 3
    assert circuit_fidelity(circuit, noise) == pytest.approx(expected, rel=1e-12)
    assert circuit_fidelity(circuit, NoiseConfig()) == 1.0


def test_penalty_is_gamma_theta_norm_plus_beta_noise_bias():
    config = QuantumConfig(qubits=2, layers=1, gamma=0.5, beta=2.0)
    layer = QuantumLayer(config, seed=3)
    layer.fidelity = 0.9  # as if the device had 10 % total error
    angles = torch.tensor([[0.1, -0.4], [1.0, 0.3]])
    out = layer(angles)
    expected = 0.5 * (layer.theta**2).sum() + 2.0 * ((0.1 * out) ** 2).mean()
    assert layer.penalty().item() == pytest.approx(expected.item(), rel=1e-6)
    theta = layer.theta.detach().clone()
    layer.penalty().backward()
    # d/dtheta of gamma ||theta||^2 alone would be 2 gamma theta; the noise term adds more.
    assert not torch.allclose(layer.theta.grad, 2 * 0.5 * theta)


def test_layer_rejects_the_wrong_number_of_features():
    layer = QuantumLayer(QuantumConfig(qubits=3, layers=1), seed=0)
    with pytest.raises(QuantumError, match="expects 3 features"):
        layer(torch.zeros(2, 4))


def test_theta_initialisation_depends_only_on_the_seed():
    a = QuantumLayer(QuantumConfig(qubits=3, layers=2), seed=1).theta
    b = QuantumLayer(QuantumConfig(qubits=3, layers=2), seed=1).theta
    c = QuantumLayer(QuantumConfig(qubits=3, layers=2), seed=2).theta
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() <= math.pi


@pytest.mark.parametrize("kind", ["hybrid", "vqc"])
def test_quantum_models_train_end_to_end(kind):
    quantum = QuantumConfig(qubits=4, layers=2, entanglement="ring")
    model = build_model(ModelConfig(kind=kind, hidden=(8,)), (4,), 3, seed=0, quantum=quantum)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 3
    logits = model(x)
    assert logits.shape == (16, 3)
    torch.nn.functional.cross_entropy(logits, y).backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads["quantum.theta"].abs().sum() > 0
    first = "encoder.net.1.weight" if kind == "hybrid" else "readout.weight"
    assert grads[first].abs().sum() > 0
    flat = get_flat(model)
    assert flat.dtype == np.float32 and flat.size == sum(p.numel() for p in model.parameters())


def test_vqc_needs_one_feature_per_qubit():
    quantum = QuantumConfig(qubits=4, layers=1)
    with pytest.raises(TrainingError, match="pca_components"):
        build_model(ModelConfig(kind="vqc"), (64,), 10, seed=0, quantum=quantum)


def test_quantum_kinds_need_a_quantum_section():
    with pytest.raises(TrainingError, match="quantum section"):
        build_model(ModelConfig(kind="hybrid"), (4,), 3, seed=0)


def test_layers_active_evaluates_the_truncated_circuit():
    config = QuantumConfig(qubits=3, layers=3, entanglement="ring", reupload=True)
    layer = QuantumLayer(config, seed=4)
    shallow = QuantumLayer(config.model_copy(update={"layers": 1}), seed=4)
    with torch.no_grad():
        shallow.theta.copy_(layer.theta[:3])
    angles = torch.tensor([[0.2, -0.7, 1.1], [0.5, 0.1, -0.3]])
    full = layer(angles)
    layer.set_layers_active(1)
    assert layer.layers_active == 1 and layer.theta.shape == (9,)
    torch.testing.assert_close(layer(angles), shallow(angles))
    assert not torch.allclose(layer(angles), full)
    layer(angles).sum().backward()
    assert layer.theta.grad[:3].abs().sum() > 0 and torch.all(layer.theta.grad[3:] == 0)
    layer.set_layers_active(None)
    torch.testing.assert_close(layer(angles), full)
    with pytest.raises(QuantumError, match="1..3 layers"):
        layer.set_layers_active(4)


def test_penalty_counts_only_the_active_layers():
    layer = QuantumLayer(QuantumConfig(qubits=2, layers=2, gamma=1.0), seed=5)
    layer.set_layers_active(1)
    assert layer.penalty().item() == pytest.approx((layer.theta[:2] ** 2).sum().item())


def test_config_rejects_mitigation_and_compilation_where_they_cannot_apply():
    from quantum.config import CompileConfig, MitigationConfig

    zne = MitigationConfig(techniques=("zne",))
    with pytest.raises(ValidationError, match="mitigation needs aer or ibm"):
        QuantumConfig(executor="exact", mitigation=zne)
    with pytest.raises(ValidationError, match="no compilation"):
        QuantumConfig(executor="exact", compilation=CompileConfig(depth_limit=10))
    with pytest.raises(ValidationError, match="aer without a device"):
        QuantumConfig(
            executor="aer",
            noise=NoiseConfig(kind="device", device="generic:5"),
            compilation=CompileConfig(coupling="line"),
        )
    with pytest.raises(ValidationError, match="parity needs observables 'z'"):
        QuantumConfig(
            qubits=2,
            executor="aer",
            observables=("XX", "ZZ"),
            mitigation=MitigationConfig(techniques=("parity",)),
        )
    ok = QuantumConfig(executor="aer", mitigation=zne, compilation=CompileConfig(coupling="ring"))
    assert ok.mitigation.zne and ok.compilation.coupling == "ring"


def test_layer_reports_its_executors_overhead():
    from quantum.config import MitigationConfig

    zne = MitigationConfig(techniques=("zne",), scale_factors=(1, 3))
    config = QuantumConfig(qubits=2, layers=2, executor="aer", shots=100, mitigation=zne)
    layer = QuantumLayer(config, seed=0)
    angles = torch.zeros(4, 2)
    layer(angles)
    layer.set_layers_active(1)
    layer(angles)
    overhead = layer.overhead()
    # 4 rows per forward, in one group (2 qubits: light cones are the whole circuit), x2 scales
    assert overhead.base_circuits == 8 and overhead.circuits == 16
    assert overhead.shots == 1600 and overhead.extra_shots == 800
    assert layer.overhead().as_dict()["extra_circuits"] == 8
    from federated.models import quantum_overhead

    model = build_model(ModelConfig(kind="vqc"), (2,), 2, seed=0, quantum=config)
    model(torch.zeros(3, 2))
    assert quantum_overhead(model).circuits == 6 and quantum_overhead(model).base_circuits == 3
