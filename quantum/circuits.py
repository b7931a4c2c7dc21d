"""Variational quantum circuits (Eq. 3-4) as qiskit circuits with parameter vectors.

The ansatz is |psi(theta)> = U_L(theta_L) ... U_1(theta_1) S(x) |0>^n with
U_l(theta_l) = prod_i RY(theta_{l,i}) followed by CNOTs over the entangling
pattern E_l (Eq. 4). Features enter by angle encoding S(x) = prod_i R(x_i),
R = RY or RX, once before the first layer or, with re-uploading, before every
layer.

Every gate gets its own parameter: a feature that is uploaded L times appears
as L encoding *slots* (`x[0..n*L)`), and `VariationalCircuit.slot_feature`
says which feature each slot carries. Executors bind slot values from the
inputs and sum slot gradients back onto features; with one parameter per gate,
the two-term parameter-shift rule (Eq. 5) holds for every parameter.

Qubit order is qiskit's: qubit 0 is the least significant bit, and the Pauli
string "IZ" measures Z on qubit 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit import ParameterVector
from qiskit.quantum_info import SparsePauliOp

from quantum.config import CircuitConfig, entangling_pairs


@dataclass(frozen=True)
class VariationalCircuit:
    """A parameterised circuit and how its parameters map to model inputs and weights."""

    circuit: QuantumCircuit
    slots: ParameterVector  # encoding parameters, one per encoding gate
    weights: ParameterVector  # trainable theta, index l * n + i
    slot_feature: np.ndarray  # (n_slots,) int: feature carried by each slot
    observables: tuple[SparsePauliOp, ...]

    @property
    def num_qubits(self) -> int:
        return self.circuit.num_qubits

    @property
    def num_features(self) -> int:
        return self.num_qubits

    @property
    def num_weights(self) -> int:
        return len(self.weights)

    @property
    def num_outputs(self) -> int:
        return len(self.observables)

    def slot_values(self, inputs: np.ndarray) -> np.ndarray:
        """Encoding-slot angles (B, n_slots) from features (B, n_features)."""
        return np.asarray(inputs)[:, self.slot_feature]

    def fold_slot_grads(self, grads: np.ndarray) -> np.ndarray:
        """Sum gradients of slots that carry the same feature: (..., S) -> (..., n_features)."""
        folded = np.zeros((*grads.shape[:-1], self.num_features), dtype=grads.dtype)
        np.add.at(folded, (..., self.slot_feature), grads)
        return folded


def build_circuit(config: CircuitConfig) -> VariationalCircuit:
    """The ansatz of Eq. 3-4 with angle encoding (re-uploaded before every layer if asked)."""
    n, layers = config.qubits, config.layers
    uploads = layers if config.reupload else 1
    slots = ParameterVector("x", n * uploads)
    weights = ParameterVector("theta", n * layers)
    pairs = entangling_pairs(config.entanglement, n)
    qc = QuantumCircuit(n, name="vqc")
    for layer in range(layers):
        if layer < uploads:
            for i in range(n):
                encode = qc.ry if config.encoding == "ry" else qc.rx
                encode(slots[layer * n + i], i)
        for i in range(n):
            qc.ry(weights[layer * n + i], i)
        for control, target in pairs:
            qc.cx(control, target)
    slot_feature = np.tile(np.arange(n), uploads)
    return VariationalCircuit(qc, slots, weights, slot_feature, observables(config))


def observables(config: CircuitConfig) -> tuple[SparsePauliOp, ...]:
    """Z on each qubit (n outputs) or the configured Pauli strings."""
    n = config.qubits
    if config.observables == "z":
        return tuple(SparsePauliOp.from_sparse_list([("Z", [i], 1.0)], n) for i in range(n))
    return tuple(SparsePauliOp(label) for label in config.observables)
