"""A quantum random number generator: Hadamard-and-measure circuits on a qiskit backend.

Each qubit is put in |+> = H|0> and measured in the computational basis; on a physical
device each outcome is a fresh, unbiased-in-principle bit (modulo readout and gate
errors, which NIST SP 800-90B health tests and a conditioner would address). One call to
`QRNG.random_bytes(n)` runs ONE circuit of ``qubits`` H+measure with
``shots = ceil(8 n / qubits)`` (split into jobs of at most ``max_shots``), asks for
per-shot bitstrings (``memory=True``) and packs the first ``8 n`` bits into bytes.

Where the randomness comes from:

- a real device: physical randomness; outputs are not reproducible. A `BackendV2` whose
  ``run`` returns per-shot memory is used directly; IBM Quantum devices no longer
  support ``backend.run``, so pass their sampler primitive and the device for
  transpilation: ``QRNG(device, sampler=qiskit_ibm_runtime.SamplerV2(mode=device))``
  (any `BaseSamplerV2` works; the bits are the classical register's per-shot
  bitstrings).
- a simulator (Aer's `AerSimulator`, the default): the bits come from the simulator's
  pseudo-random generator, so they are only as random, and as secret, as its seed. With
  ``seed_simulator`` set, a `QRNG` is fully reproducible: call number ``k`` of an instance
  seeded with ``s`` runs with ``seed_simulator = SeedSequence([s, k])``, so successive calls
  differ and the same (seed, call sequence) repeats byte for byte. Tests and reproducible
  runs use seeds; ``seed_simulator=None`` lets Aer seed itself from OS entropy. With a
  `sampler`, seeding is the sampler's own option (e.g. Aer's ``SamplerV2(seed=...)``),
  and ``seed_simulator`` must stay None.

`monobit_p_value` and `runs_p_value` are the frequency and runs tests of NIST SP 800-22
(sections 2.1 and 2.3), for health-checking the output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import numpy as np
from qiskit import QuantumCircuit
from qiskit.primitives import BaseSamplerV2
from qiskit.providers import BackendV2

from qfl.errors import QuantumError, QuantumResourceUnavailable

__all__ = [
    "DEFAULT_MAX_SHOTS",
    "QRNG",
    "bits_from_bytes",
    "bits_from_memory",
    "hadamard_circuit",
    "monobit_p_value",
    "runs_p_value",
]

DEFAULT_MAX_SHOTS: Final = 100_000  # IBM devices cap shots per circuit around here


def hadamard_circuit(qubits: int) -> QuantumCircuit:
    """H on each of `qubits` qubits, then measure qubit i into classical bit i."""
    circuit = QuantumCircuit(qubits, qubits, name="qrng")
    circuit.h(range(qubits))
    circuit.measure(range(qubits), range(qubits))
    return circuit


def bits_from_memory(memory: Sequence[str], width: int) -> np.ndarray:
    """Per-shot bitstrings (each `width` characters of 0/1) as one uint8 array of bits.

    Raises `QuantumError` if a shot is not a `width`-long string of 0s and 1s.
    """
    if not memory:
        return np.zeros(0, dtype=np.uint8)
    if any(not isinstance(shot, str) or len(shot) != width for shot in memory):
        raise QuantumError(f"the backend returned shots that are not {width}-bit strings")
    bits = np.frombuffer("".join(memory).encode("ascii"), dtype=np.uint8) - ord("0")
    if bits.max() > 1:
        raise QuantumError("the backend returned a shot with characters other than 0 and 1")
    return bits


def bits_from_bytes(data: bytes) -> np.ndarray:
    """The bits of `data`, most significant bit of each byte first, as uint8 0/1."""
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))


class QRNG:
    """Random bytes from measured |+> states on `backend` (Aer's AerSimulator by default).

    With `sampler`, jobs run through that sampler primitive instead of ``backend.run``;
    `backend` (optional then) is the device the circuit is transpiled for.
    `random_bytes` matches ``Callable[[int], bytes]``, the randomness source that
    `ledger.consensus.Validator` takes.
    """

    def __init__(
        self,
        backend: BackendV2 | None = None,
        *,
        qubits: int = 16,
        seed_simulator: int | None = None,
        max_shots: int = DEFAULT_MAX_SHOTS,
        sampler: BaseSamplerV2 | None = None,
    ):
        if isinstance(qubits, bool) or not isinstance(qubits, int) or qubits < 1:
            raise QuantumError(f"qubits must be an int >= 1, got {qubits!r}")
        if seed_simulator is not None and (
            isinstance(seed_simulator, bool) or not isinstance(seed_simulator, int)
        ):
            raise QuantumError(f"seed_simulator must be an int or None, got {seed_simulator!r}")
        if seed_simulator is not None and seed_simulator < 0:
            raise QuantumError(f"seed_simulator must be >= 0, got {seed_simulator}")
        if isinstance(max_shots, bool) or not isinstance(max_shots, int) or max_shots < 1:
            raise QuantumError(f"max_shots must be an int >= 1, got {max_shots!r}")
        if sampler is not None and seed_simulator is not None:
            raise QuantumError("with a sampler, seed the sampler itself; seed_simulator is None")
        self.sampler = sampler
        if backend is None and sampler is None:
            backend = _default_backend()
        self.backend = backend
        num_qubits = getattr(self.backend, "num_qubits", None)
        if num_qubits is not None and qubits > num_qubits:
            raise QuantumError(f"{qubits} qubits asked, the backend has {num_qubits}")
        self.qubits = qubits
        self.seed_simulator = seed_simulator
        self.max_shots = max_shots
        self._calls = 0
        circuit = hadamard_circuit(qubits)
        self._circuit = circuit if self.backend is None else _compile(circuit, self.backend)

    def random_bytes(self, n: int) -> bytes:
        """`n` bytes from ``ceil(8 n / qubits)`` shots of the Hadamard circuit."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise QuantumError(f"random_bytes needs an int n >= 0, got {n!r}")
        if n == 0:
            return b""
        shots = math.ceil(8 * n / self.qubits)
        seeds = self._next_seeds(math.ceil(shots / self.max_shots))
        chunks = []
        for job, seed in enumerate(seeds):
            job_shots = min(self.max_shots, shots - job * self.max_shots)
            chunks.append(self._run(job_shots, seed))
        bits = np.concatenate(chunks)[: 8 * n]
        return np.packbits(bits).tobytes()

    def _next_seeds(self, jobs: int) -> list[int | None]:
        if self.seed_simulator is None:
            return [None] * jobs
        self._calls += 1
        sequence = np.random.SeedSequence([self.seed_simulator, self._calls])
        return [int(s) for s in sequence.generate_state(jobs, dtype=np.uint32)]

    def _shots(self, shots: int, seed: int | None) -> list[str]:
        if self.sampler is not None:
            result = self.sampler.run([self._circuit], shots=shots).result()
            return list(result[0].data[self._circuit.cregs[0].name].get_bitstrings())
        assert self.backend is not None
        options: dict[str, object] = {"shots": shots, "memory": True}
        if seed is not None:
            options["seed_simulator"] = seed
        return self.backend.run(self._circuit, **options).result().get_memory(0)

    def _run(self, shots: int, seed: int | None) -> np.ndarray:
        try:
            memory = self._shots(shots, seed)
        except QuantumError:
            raise
        except Exception as exc:  # a backend fails in its own ways (network, queue, options)
            where = self.sampler if self.sampler is not None else self.backend
            raise QuantumResourceUnavailable(
                f"QRNG backend {getattr(where, 'name', type(where).__name__)!r} failed: {exc}"
            ) from exc
        if len(memory) != shots:
            raise QuantumError(f"the backend returned {len(memory)} shots, {shots} were asked")
        return bits_from_memory(memory, self.qubits)


def _default_backend() -> BackendV2:
    try:
        from qiskit_aer import AerSimulator
    except ImportError as exc:
        raise QuantumResourceUnavailable("the default QRNG backend needs qiskit-aer") from exc
    return AerSimulator()


def _compile(circuit: QuantumCircuit, backend: BackendV2) -> QuantumCircuit:
    """`circuit` for `backend`: as is on Aer (H and measure are native), else transpiled."""
    try:
        from qiskit_aer import AerSimulator
    except ImportError:  # pragma: no cover - qiskit-aer is a dependency
        AerSimulator = ()  # type: ignore[assignment,misc]  # noqa: N806
    if isinstance(backend, AerSimulator):
        return circuit
    from qiskit.transpiler import generate_preset_pass_manager

    return generate_preset_pass_manager(optimization_level=1, backend=backend).run(circuit)


# --------------------------------------------------------------------------- NIST SP 800-22


def _as_bits(bits: np.ndarray | Sequence[int]) -> np.ndarray:
    array = np.asarray(bits)
    if array.ndim != 1 or array.size == 0 or not np.isin(array, (0, 1)).all():
        raise ValueError("expected a non-empty 1-D sequence of 0/1 bits")
    return array.astype(np.int64)


def monobit_p_value(bits: np.ndarray | Sequence[int]) -> float:
    """NIST SP 800-22 2.1 frequency (monobit) test: erfc(|sum(2b - 1)| / sqrt(2 n)).

    The sequence passes at level alpha when the p-value is >= alpha (NIST: n >= 100).
    """
    array = _as_bits(bits)
    s_n = int(2 * array.sum() - array.size)
    return math.erfc(abs(s_n) / math.sqrt(array.size) / math.sqrt(2))


def runs_p_value(bits: np.ndarray | Sequence[int]) -> float:
    """NIST SP 800-22 2.3 runs test p-value (0.0 when the frequency prerequisite fails).

    pi = ones / n; if |pi - 1/2| >= 2 / sqrt(n) the test is not applicable and fails (0.0);
    else V = 1 + #{k : b_k != b_k+1} and p = erfc(|V - 2 n pi (1 - pi)| /
    (2 sqrt(2 n) pi (1 - pi))).
    """
    array = _as_bits(bits)
    n = array.size
    pi = array.sum() / n
    if abs(pi - 0.5) >= 2 / math.sqrt(n):
        return 0.0
    runs = 1 + int(np.count_nonzero(array[1:] != array[:-1]))
    spread = 2 * math.sqrt(2 * n) * pi * (1 - pi)
    return math.erfc(abs(runs - 2 * n * pi * (1 - pi)) / spread)
