"""The QRNG: NIST SP 800-22 frequency and runs tests, seeding, batching, failure modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit_aer import AerSimulator

from qfl.errors import QuantumError, QuantumResourceUnavailable
from quantum.qrng import (
    QRNG,
    bits_from_bytes,
    bits_from_memory,
    hadamard_circuit,
    monobit_p_value,
    runs_p_value,
)

ALPHA = 0.01
N_BITS = 100_000
# NIST SP 800-22 rev1a, 2.1.8 and 2.3.8: the same 100-bit example sequence
NIST_EPSILON = (
    "11001001000011111101101010100010001000010110100011"
    "00001000110100110001001100011001100010100010111000"
)


def bits(text: str) -> list[int]:
    return [int(c) for c in text]


# --------------------------------------------------------------------------- the statistics


@pytest.mark.parametrize(
    ("epsilon", "expected"),
    [("1011010101", 0.527089), (NIST_EPSILON, 0.109599)],
)
def test_monobit_matches_nist_examples(epsilon: str, expected: float) -> None:
    assert monobit_p_value(bits(epsilon)) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("epsilon", "expected"),
    [("1001101011", 0.147232), (NIST_EPSILON, 0.500798)],
)
def test_runs_matches_nist_examples(epsilon: str, expected: float) -> None:
    assert runs_p_value(bits(epsilon)) == pytest.approx(expected, abs=1e-6)


def test_runs_test_fails_when_its_frequency_prerequisite_fails() -> None:
    assert runs_p_value([1] * 90 + [0] * 10) == 0.0


def test_statistics_refuse_non_bits() -> None:
    for bad in ([], [0, 2], [[0, 1]]):
        with pytest.raises(ValueError):
            monobit_p_value(bad)
        with pytest.raises(ValueError):
            runs_p_value(bad)


# --------------------------------------------------------------------------- the generator


@pytest.fixture(scope="module")
def stream() -> bytes:
    return QRNG(qubits=16, seed_simulator=2024).random_bytes(N_BITS // 8)


def test_qrng_output_passes_frequency_and_runs_tests(stream: bytes) -> None:
    sample = bits_from_bytes(stream)
    assert sample.size == N_BITS
    assert monobit_p_value(sample) >= ALPHA
    assert runs_p_value(sample) >= ALPHA


def test_a_biased_circuit_fails_the_frequency_test() -> None:
    """RY(1.2) gives P(1) = sin^2(0.6) = 0.32: the test must be able to fail."""
    qubits = 16
    rigged = QuantumCircuit(qubits, qubits)
    rigged.ry(1.2, range(qubits))
    rigged.measure(range(qubits), range(qubits))
    shots = math.ceil(N_BITS / qubits)
    memory = AerSimulator().run(rigged, shots=shots, memory=True, seed_simulator=5).result()
    sample = bits_from_memory(memory.get_memory(), qubits)[:N_BITS]
    assert monobit_p_value(sample) < ALPHA
    assert runs_p_value(sample) < ALPHA


def test_a_slightly_biased_source_fails_the_frequency_test() -> None:
    sample = (np.random.default_rng(0).random(N_BITS) < 0.55).astype(np.uint8)
    assert monobit_p_value(sample) < ALPHA


def test_seeds_reproduce_and_differ() -> None:
    first, again, other = (QRNG(seed_simulator=s) for s in (1, 1, 2))
    a = first.random_bytes(64)
    assert len(a) == 64
    assert again.random_bytes(64) == a
    assert other.random_bytes(64) != a
    second = first.random_bytes(64)
    assert second != a  # each call of a seeded QRNG draws new bits...
    assert again.random_bytes(64) == second  # ...in the same sequence for the same seed
    assert QRNG(seed_simulator=1).random_bytes(0) == b""


def test_unseeded_qrng_differs_between_instances() -> None:
    assert QRNG().random_bytes(32) != QRNG().random_bytes(32)


class Spy(AerSimulator):
    """Aer that records the shots of each run."""

    def __init__(self) -> None:
        super().__init__()
        self.shots: list[int] = []

    def run(self, circuits, **options):
        self.shots.append(options["shots"])
        assert options["memory"] is True
        return super().run(circuits, **options)


@pytest.mark.parametrize(("n", "qubits", "shots"), [(1, 16, 1), (3, 5, 5), (20, 16, 10)])
def test_one_batched_circuit_per_call(n: int, qubits: int, shots: int) -> None:
    spy = Spy()
    out = QRNG(spy, qubits=qubits, seed_simulator=3).random_bytes(n)
    assert len(out) == n
    assert spy.shots == [shots] == [math.ceil(8 * n / qubits)]


def test_shots_are_split_by_max_shots() -> None:
    spy = Spy()
    out = QRNG(spy, qubits=8, seed_simulator=3, max_shots=16).random_bytes(40)
    assert len(out) == 40
    assert spy.shots == [16, 16, 8]


def test_circuit_is_hadamard_and_measure() -> None:
    ops = hadamard_circuit(3).count_ops()
    assert ops == {"h": 3, "measure": 3}


def test_runs_on_a_device_backend_through_the_transpiler() -> None:
    runtime = pytest.importorskip("qiskit_ibm_runtime.fake_provider")
    qrng = QRNG(runtime.FakeManilaV2(), qubits=5, seed_simulator=4)
    assert len(qrng.random_bytes(10)) == 10
    with pytest.raises(QuantumError, match="qubits"):
        QRNG(runtime.FakeManilaV2(), qubits=6)


def test_runs_through_a_sampler_primitive() -> None:
    from qiskit_aer.primitives import SamplerV2

    first = QRNG(sampler=SamplerV2(seed=8), qubits=16).random_bytes(2000)
    assert first == QRNG(sampler=SamplerV2(seed=8), qubits=16).random_bytes(2000)
    assert first != QRNG(sampler=SamplerV2(seed=9), qubits=16).random_bytes(2000)
    assert monobit_p_value(bits_from_bytes(first)) >= ALPHA
    with pytest.raises(QuantumError, match="seed the sampler"):
        QRNG(sampler=SamplerV2(), seed_simulator=1)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_runs_through_the_ibm_runtime_sampler_in_local_mode() -> None:
    """How a real IBM device is used (backend.run is gone there): its SamplerV2."""
    runtime = pytest.importorskip("qiskit_ibm_runtime")
    from qiskit_ibm_runtime.fake_provider import FakeManilaV2

    device = FakeManilaV2()
    qrng = QRNG(device, qubits=5, sampler=runtime.SamplerV2(mode=device))
    assert len(qrng.random_bytes(16)) == 16


class Broken(AerSimulator):
    """An Aer whose runs fail or return malformed shots."""

    def __init__(self, memory=None, error: Exception | None = None) -> None:
        super().__init__()
        self.memory, self.error = memory, error

    def run(self, circuits, **options):
        if self.error is not None:
            raise self.error
        memory = self.memory

        class Result:
            def result(self):
                return self

            def get_memory(self, index):
                return memory

        return Result()


@pytest.mark.parametrize("memory", [["0101"], ["01010101", "0101010"], ["01010102"]])
def test_malformed_shots_raise(memory) -> None:
    with pytest.raises(QuantumError):
        QRNG(Broken(memory), qubits=8).random_bytes(len(memory))


def test_backend_failure_is_a_resource_error() -> None:
    with pytest.raises(QuantumResourceUnavailable, match="queue closed"):
        QRNG(Broken(error=RuntimeError("queue closed")), qubits=8).random_bytes(2)


@pytest.mark.parametrize(
    "kwargs", [{"qubits": 0}, {"qubits": 31}, {"seed_simulator": -1}, {"max_shots": 0}]
)
def test_bad_arguments(kwargs) -> None:
    with pytest.raises(QuantumError):
        QRNG(**kwargs)


@pytest.mark.parametrize("n", [-1, 1.5, True])
def test_bad_length(n) -> None:
    with pytest.raises(QuantumError):
        QRNG(seed_simulator=1).random_bytes(n)
