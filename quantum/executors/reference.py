"""The qiskit-machine-learning way of running the same circuit: a baseline to check against.

`ReferenceExecutor` wraps `EstimatorQNN` (input parameters = the encoding
slots, weight parameters = theta, one output per observable):

* exact (default): qiskit's `StatevectorEstimator`, precision 0, and the QNN's
  parameter-shift gradient on it; values and gradients are exact.
* noisy baseline (noise given, or precision > 0): Aer's `EstimatorV2` with the
  noise model and `ParamShiftEstimatorGradient`; the estimator adds Gaussian
  noise of standard deviation `precision` (Aer's model of finite shots). Aer
  re-seeds that noise identically for every pub: with a seed, pubs of equal
  shape get the same draws (the gradient's one-value pubs all get the same
  offset, which cancels in the +-shift difference). Readout errors in the
  model are ignored (Aer's estimator measures nothing; AerExecutor applies them).
  Device snapshots are not supported here (they need a transpiled circuit and
  laid-out observables): use `AerExecutor` for those.

This is how qiskit-machine-learning users would run it, pub by pub; the
shot-based executors (aer.py, ibm.py) are measured against it
(benchmarks/qnn_noisy.py).
"""

from __future__ import annotations

import numpy as np
from qiskit_aer.noise import NoiseModel
from qiskit_machine_learning.connectors import TorchConnector
from qiskit_machine_learning.gradients import ParamShiftEstimatorGradient
from qiskit_machine_learning.neural_networks import EstimatorQNN

from qfl.errors import QuantumError
from quantum.circuits import VariationalCircuit
from quantum.config import NoiseConfig
from quantum.executors.aer import values_matrix
from quantum.executors.base import Executor
from quantum.noise import build_noise_model


class ReferenceExecutor(Executor):
    """`EstimatorQNN` on a statevector (exact) or on noisy Aer (the noisy baseline)."""

    def __init__(
        self,
        circuit: VariationalCircuit,
        *,
        noise: NoiseConfig | NoiseModel | None = None,
        precision: float = 0.0,
        seed: int = 0,
    ):
        super().__init__(circuit)
        if precision < 0:
            raise QuantumError(f"precision must be >= 0, got {precision}")
        if isinstance(noise, NoiseConfig):
            if noise.kind == "device":
                raise QuantumError("ReferenceExecutor has no device snapshots; use AerExecutor")
            noise = build_noise_model(noise, seed)
        self.noise_model = noise
        self.precision = precision
        self.estimator = estimator = self._estimator(seed)
        self.qnn = EstimatorQNN(
            circuit=circuit.circuit,
            observables=list(circuit.observables),
            input_params=list(circuit.slots),
            weight_params=list(circuit.weights),
            estimator=estimator,
            gradient=ParamShiftEstimatorGradient(estimator),
            input_gradients=True,
            default_precision=precision,
        )

    def _estimator(self, seed: int):
        """StatevectorEstimator when exact, else Aer's EstimatorV2 with the noise model."""
        if self.noise_model is None and self.precision == 0:
            from qiskit.primitives import StatevectorEstimator

            return StatevectorEstimator(default_precision=0.0, seed=seed)
        from qiskit_aer.primitives import EstimatorV2

        backend_options = {} if self.noise_model is None else {"noise_model": self.noise_model}
        return EstimatorV2(
            options={
                "default_precision": self.precision,
                "backend_options": backend_options,
                "run_options": {"seed_simulator": seed},
            }
        )

    def reseed(self, seed: int) -> None:
        """Restart the noisy baseline's sampling from `seed` (nothing to do when exact)."""
        if hasattr(self.estimator.options, "run_options"):  # Aer's EstimatorV2
            self.estimator.options.run_options["seed_simulator"] = seed

    def expectations(self, inputs: np.ndarray, weights: np.ndarray) -> np.ndarray:
        values_matrix(self.circuit, inputs, weights)  # shape checks
        slots = self.circuit.slot_values(np.asarray(inputs, dtype=float))  # (B, S)
        out = self.qnn.forward(slots, np.asarray(weights, dtype=float))  # (B, O)
        return np.asarray(out, dtype=float).reshape(len(slots), self.circuit.num_outputs)

    def jacobians(
        self, inputs: np.ndarray, weights: np.ndarray, inputs_grad: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray]:
        values_matrix(self.circuit, inputs, weights)  # shape checks
        slots = self.circuit.slot_values(np.asarray(inputs, dtype=float))  # (B, S)
        d_slots, d_weights = self.qnn.backward(slots, np.asarray(weights, dtype=float))
        shape = (len(slots), self.circuit.num_outputs)
        d_slots = np.asarray(d_slots, dtype=float).reshape(*shape, len(self.circuit.slots))
        d_weights = np.asarray(d_weights, dtype=float).reshape(*shape, self.circuit.num_weights)
        d_inputs = self.circuit.fold_slot_grads(d_slots) if inputs_grad else None
        return d_inputs, d_weights  # (B, O, F), (B, O, P)

    def torch_module(self, initial_weights: np.ndarray | None = None) -> TorchConnector:
        """The QNN as a torch module; NOTE its inputs are slot values, circuit.slot_values(x)."""
        weights = None if initial_weights is None else np.asarray(initial_weights, dtype=float)
        return TorchConnector(self.qnn, initial_weights=weights)
