"""Differential privacy for federated rounds: clipping, Gaussian noise, accounting.

User-level DP-FedAvg (McMahan et al. 2018). Every client update is clipped to L2 norm C,

    clip(Delta_k) = Delta_k * min(1, C / ||Delta_k||_2),

and Gaussian noise of standard deviation z * C (z: the noise multiplier) is added

* ``central``: once, by the server, to the sum of the clipped updates; the round's update
  is (sum_k clip(Delta_k) + N(0, z^2 C^2 I)) / m over the m clients of the round (equal
  weights: a weighted sum would have sensitivity max_k w_k C). Adjacency: one client's
  whole data added or removed, L2 sensitivity C.
* ``local``: by each client, to its own clipped update, so the server never sees an
  update without noise. Adjacency: one client's data replaced, sensitivity 2 C, so the
  accountant sees the noise multiplier z / 2; and the server knows who took part, so a
  client's loss is never amplified by sampling.

The privacy loss is tracked by Opacus' accountants (RDP, Mironov 2017 with the conversion
of Balle et al. 2020; or PRV, Gopi et al. 2021) for the (subsampled) Gaussian mechanism;
`calibrate_noise_multiplier` finds z for a target epsilon over a planned number of rounds
with Opacus' `get_noise_multiplier`.

Sampling amplification is off unless `amplification=True`: qfl samples clients from the
ledger's public randomness beacon, and amplification by subsampling holds only when the
sample is secret. Without it every round counts at sample rate 1, the bound of a client
that took part in every round.

Noise must be secret to protect anything: noise that anyone can regenerate from a public
seed can be subtracted. `noise_rng` seeds the generator from the run's master secret
(HKDF), which is reproducible for whoever holds that secret and for no one else; a
master secret derived from the run seed (`ledger.keys.master_secret_from_run_seed`) is
for reproducible experiments only.

The quantum bound at the end of this module (`quantum_privacy_bound`) covers only the
measured outputs of a quantum layer; it never replaces the accountant.
"""

from __future__ import annotations

import math
import warnings
from typing import Final, Literal

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ledger.keys import KEY_SALT, MASTER_SECRET_BYTES
from qfl.errors import ConfigError, TrainingError
from quantum.config import NoiseConfig

PrivacyMode = Literal["none", "central", "local"]
AccountantName = Literal["rdp", "prv"]

# Opacus' RDP orders, extended upwards so that small epsilons (large z) are not cut off.
RDP_ORDERS: Final = (
    [1 + x / 10.0 for x in range(1, 100)]
    + list(range(12, 64))
    + [64, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1024]
)
PRV_EPS_ERROR: Final = 0.01


class PrivacyConfig(BaseModel):
    """Differential privacy of the run: where noise is added, how much, and the budget.

    Give either `noise_multiplier` (z) or `target_epsilon` (then z is calibrated before
    the run over `rounds`, or the federation's rounds when `rounds` is not set).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: PrivacyMode = "none"
    clip: float | None = Field(None, gt=0.0, description="L2 clipping norm C of each update")
    noise_multiplier: float | None = Field(None, ge=0.0, description="z: noise std is z * C")
    target_epsilon: float | None = Field(None, gt=0.0, description="calibrate z to reach this")
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="delta of the reported epsilon")
    rounds: int | None = Field(None, ge=1, description="rounds the target budget is planned for")
    accountant: AccountantName = "rdp"
    amplification: bool = Field(
        False, description="account client sampling (only sound when the sample is secret)"
    )
    quantum_bound: bool = Field(True, description="log the quantum-noise bound of quantum clients")

    @model_validator(mode="after")
    def _check(self) -> PrivacyConfig:
        if self.mode == "none":
            for name in ("clip", "noise_multiplier", "target_epsilon", "rounds"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} needs mode 'central' or 'local' (mode is 'none')")
            return self
        if self.clip is None:
            raise ValueError(f"mode {self.mode!r} needs clip (the L2 norm bound C)")
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give exactly one of noise_multiplier and target_epsilon")
        if self.rounds is not None and self.target_epsilon is None:
            raise ValueError("rounds plans a target_epsilon budget; it needs target_epsilon")
        if self.mode == "local" and self.amplification:
            raise ValueError("amplification does not apply to local DP: the server sees who sent")
        return self

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


# --------------------------------------------------------------------------- mechanisms

NOISE_INFO_PREFIX: Final = b"qfl/dp-noise/v1/"


def noise_rng(
    master_secret: bytes, round_: int, client_id: int | None = None
) -> np.random.Generator:
    """The generator of round `round_`'s DP noise: the server's (client_id None) or a client's.

    Seeded with 256 bits of HKDF-SHA256(master_secret, KEY_SALT,
    b"qfl/dp-noise/v1/<round>/<client or 'server'>").
    """
    if not isinstance(master_secret, bytes) or len(master_secret) < MASTER_SECRET_BYTES:
        raise ValueError(f"master secret must be at least {MASTER_SECRET_BYTES} bytes")
    who = "server" if client_id is None else str(client_id)
    info = NOISE_INFO_PREFIX + f"{round_}/{who}".encode("ascii")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=KEY_SALT, info=info).derive(master_secret)
    words = np.frombuffer(key, dtype="<u4").tolist()
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))


def clip_update(delta: np.ndarray, clip: float) -> np.ndarray:
    """clip(Delta) = Delta * min(1, C / ||Delta||_2), float32; a zero update stays zero."""
    if not clip > 0:
        raise TrainingError(f"clipping norm must be > 0, got {clip}")
    flat = np.asarray(delta, dtype=np.float64)
    norm = float(np.linalg.norm(flat))
    if not math.isfinite(norm):
        raise TrainingError("update has a non-finite entry; it cannot be clipped")
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    return (flat * factor).astype(np.float32)


def gaussian_noise(shape: tuple[int, ...], std: float, rng: np.random.Generator) -> np.ndarray:
    """N(0, std^2) of `shape`, float64, drawn from `rng`."""
    if std < 0:
        raise TrainingError(f"noise std must be >= 0, got {std}")
    return rng.normal(0.0, std, size=shape)


def noise_std(config: PrivacyConfig, noise_multiplier: float) -> float:
    """Standard deviation z * C of the Gaussian noise (on the sum, or on each local update)."""
    if config.clip is None:
        raise TrainingError("privacy mode 'none' adds no noise")
    return noise_multiplier * config.clip


def add_central_noise(
    clipped_sum: np.ndarray,
    config: PrivacyConfig,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """sum_k clip(Delta_k) + N(0, z^2 C^2 I): the server's step in central mode (float64).

    Under secure aggregation this is the only place noise enters: clients clip before
    masking, the server adds noise to the unmasked sum.
    """
    if config.mode != "central":
        raise TrainingError(f"central noise needs privacy mode 'central', not {config.mode!r}")
    total = np.asarray(clipped_sum, dtype=np.float64)
    return total + gaussian_noise(total.shape, noise_std(config, noise_multiplier), rng)


def privatize_local(
    delta: np.ndarray, config: PrivacyConfig, noise_multiplier: float, rng: np.random.Generator
) -> np.ndarray:
    """clip(Delta_k) + N(0, z^2 C^2 I): a client's own update in local mode (float32)."""
    if config.mode != "local" or config.clip is None:
        raise TrainingError(f"local noise needs privacy mode 'local', not {config.mode!r}")
    clipped = clip_update(delta, config.clip).astype(np.float64)
    noise = gaussian_noise(clipped.shape, noise_std(config, noise_multiplier), rng)
    return (clipped + noise).astype(np.float32)


def private_mean(
    deltas: list[np.ndarray],
    config: PrivacyConfig,
    noise_multiplier: float,
    rng: np.random.Generator,
    *,
    denominator: int | None = None,
) -> np.ndarray:
    """The round's DP update from the client updates, in client-id order (float32).

    central: (sum_k clip(Delta_k) + N(0, z^2 C^2 I)) / m; local: the deltas are already
    privatized (`privatize_local`), their plain mean. m is `denominator` (e.g. the public
    number of clients sampled) or the number of updates.
    """
    if not deltas:
        raise TrainingError("no client update to aggregate")
    m = len(deltas) if denominator is None else denominator
    if m < 1:
        raise TrainingError(f"denominator must be >= 1, got {m}")
    if config.mode == "local":
        total = np.sum([np.asarray(d, dtype=np.float64) for d in deltas], axis=0)
    elif config.mode == "central" and config.clip is not None:
        total = np.zeros(np.shape(deltas[0]), dtype=np.float64)
        for d in deltas:
            total += clip_update(d, config.clip)
        total = add_central_noise(total, config, noise_multiplier, rng)
    else:
        raise TrainingError("private_mean needs privacy mode 'central' or 'local'")
    return (total / m).astype(np.float32)


# --------------------------------------------------------------------------- accounting


def sample_rate(config: PrivacyConfig, clients_per_round: int, n_clients: int) -> float:
    """The rate the accountant uses: clients_per_round / n_clients with amplification, else 1."""
    if not 1 <= clients_per_round <= n_clients:
        raise ConfigError(f"cannot sample {clients_per_round} of {n_clients} clients")
    return clients_per_round / n_clients if config.amplification else 1.0


def accounted_multiplier(config: PrivacyConfig, noise_multiplier: float) -> float:
    """z as the accountant sees it: z in central mode, z / 2 in local mode (sensitivity 2C)."""
    return noise_multiplier / 2.0 if config.mode == "local" else noise_multiplier


def _opacus_accountant(name: AccountantName):
    try:
        from opacus.accountants import PRVAccountant, RDPAccountant
    except ImportError as exc:  # pragma: no cover - opacus is a runtime dependency
        raise ConfigError("privacy accounting needs opacus: pip install 'opacus>=1.5'") from exc
    return RDPAccountant() if name == "rdp" else PRVAccountant()


def _epsilon(accountant, name: AccountantName, delta: float) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "optimal order is the largest alpha"
        warnings.simplefilter("ignore", RuntimeWarning)  # PRV at rate 1 takes log(1 - q) = -inf
        if name == "rdp":
            return float(accountant.get_epsilon(delta=delta, alphas=RDP_ORDERS))
        return float(accountant.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))


class PrivacyAccountant:
    """Epsilon spent so far, at the configured delta, by an Opacus accountant.

    `step()` once per round that released a noised update; `epsilon()` after each round.
    With noise multiplier 0 (no noise) epsilon is infinite.
    """

    def __init__(self, config: PrivacyConfig, noise_multiplier: float, rate: float) -> None:
        if not config.enabled:
            raise ConfigError("privacy.mode is 'none': there is nothing to account")
        if not 0.0 < rate <= 1.0:
            raise ConfigError(f"sample rate must be in (0, 1], got {rate}")
        self.config = config
        self.noise_multiplier = noise_multiplier
        self.multiplier = accounted_multiplier(config, noise_multiplier)
        self.rate = rate
        self.rounds = 0
        self._accountant = _opacus_accountant(config.accountant)

    def step(self) -> None:
        """One more round of the (subsampled) Gaussian mechanism."""
        self.rounds += 1
        if self.multiplier > 0:
            self._accountant.step(noise_multiplier=self.multiplier, sample_rate=self.rate)

    def epsilon(self, delta: float | None = None) -> float:
        """Epsilon after the rounds so far, at `delta` (default: the configured delta)."""
        delta = self.config.delta if delta is None else delta
        if self.rounds == 0:
            return 0.0
        if self.multiplier == 0:
            return math.inf
        return _epsilon(self._accountant, self.config.accountant, delta)

    def metrics(self) -> dict[str, float]:
        """What to log each round: epsilon, delta, z, sample rate, rounds accounted."""
        return {
            "dp_epsilon": self.epsilon(),
            "dp_delta": self.config.delta,
            "dp_noise_multiplier": self.noise_multiplier,
            "dp_sample_rate": self.rate,
            "dp_rounds": float(self.rounds),
        }


def epsilon_after(
    noise_multiplier: float,
    rate: float,
    rounds: int,
    delta: float,
    accountant: AccountantName = "rdp",
) -> float:
    """Epsilon of `rounds` compositions of the Gaussian mechanism (accountant's z) at `rate`."""
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    acc = _opacus_accountant(accountant)
    acc.history = [(noise_multiplier, rate, rounds)]
    return _epsilon(acc, accountant, delta)


def calibrate_noise_multiplier(
    config: PrivacyConfig, *, rounds: int, rate: float, tolerance: float = 0.01
) -> float:
    """The smallest z (to `tolerance` in epsilon) whose epsilon after `rounds` is <= target.

    Uses Opacus' `get_noise_multiplier`; in local mode the accountant's z / 2 is solved for
    and doubled. `config.rounds`, when set, overrides `rounds`.
    """
    if config.target_epsilon is None:
        raise ConfigError("calibration needs privacy.target_epsilon")
    from opacus.accountants.utils import get_noise_multiplier

    steps = config.rounds or rounds
    kwargs = {"alphas": RDP_ORDERS} if config.accountant == "rdp" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            z = get_noise_multiplier(
                target_epsilon=config.target_epsilon,
                target_delta=config.delta,
                sample_rate=rate,
                steps=steps,
                accountant=config.accountant,
                epsilon_tolerance=tolerance,
                **kwargs,
            )
        except ValueError as exc:
            raise ConfigError(f"privacy.target_epsilon cannot be reached: {exc}") from exc
    return 2.0 * z if config.mode == "local" else float(z)


def resolve_noise_multiplier(
    config: PrivacyConfig, *, rounds: int, clients_per_round: int, n_clients: int
) -> float:
    """z of the run: the configured one, or the calibrated one for target_epsilon."""
    if not config.enabled:
        raise ConfigError("privacy.mode is 'none': there is no noise multiplier")
    if config.noise_multiplier is not None:
        return config.noise_multiplier
    rate = sample_rate(config, clients_per_round, n_clients)
    return calibrate_noise_multiplier(config, rounds=rounds, rate=rate)


def gaussian_dp_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon of mu-Gaussian DP at delta (Balle & Wang 2018; Dong et al. 2022).

    delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2). T rounds of the Gaussian
    mechanism at sample rate 1 with multiplier z are exactly mu = sqrt(T) / z: a cross-check
    of the accountants, never the accountant itself.
    """
    if mu <= 0:
        return 0.0
    from scipy import optimize, stats  # here: a runner or aggregator never needs scipy

    def excess(eps: float) -> float:
        return (
            stats.norm.cdf(-eps / mu + mu / 2)
            - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)
            - delta
        )

    if excess(0.0) <= 0:
        return 0.0
    high = 1.0
    while excess(high) > 0:
        high *= 2
    return float(optimize.brentq(excess, 0.0, high, xtol=1e-10))


# --------------------------------------------------------------------------- quantum noise

QUANTUM_SCOPE: Final = (
    "covers the measured outputs of the quantum layer (each +-1 shot outcome of each "
    "observable, for one training example against any other); not the classical "
    "parts of the update, not the whole update"
)


def zhou_ying_epsilon(p: float, dim: int, tau: float = 1.0) -> float:
    """epsilon = ln(1 + (1 - p) d tau / p) of the global depolarizing channel.

    E(rho) = (1 - p) rho + p I / d is epsilon-DP (delta = 0) for any measurement of input
    states at trace distance <= tau (Zhou and Ying 2017; the bound Du et al. 2021 use for
    noisy quantum classifiers). p = 0 gives infinity: no noise, no privacy.
    """
    if not 0.0 <= p <= 1.0 or dim < 2 or not 0.0 <= tau <= 1.0:
        raise ValueError(f"need 0 <= p <= 1, dim >= 2, 0 <= tau <= 1 (got {p}, {dim}, {tau})")
    if p == 0.0:
        return math.inf
    return math.log1p((1.0 - p) * dim * tau / p)


def outcome_epsilon(noise: NoiseConfig) -> float:
    """Pure epsilon of ONE +-1 shot outcome of one observable of the quantum layer.

    The ansatz ends with a layer of RY gates on every qubit, after the last data upload,
    followed only by CNOTs (Cliffords). In the Heisenberg picture every non-identity Pauli
    observable, pushed back through the CNOTs, still acts on some qubit right after its last
    RY, whose depolarizing error (qiskit's (1 - p1) rho + p1 I / 2) damps it by (1 - p1);
    the other errors of the parametric model (2-qubit depolarizing, symmetric readout flips
    r, which multiply the measured mean by (1 - 2r)) only damp it further. So a shot's mean
    is e = (1 - 2g) <P'> with |<P'>| <= 1 and 1 - 2g = (1 - p1)(1 - 2r), and the outcome
    +-1 (probability (1 +- e) / 2) has likelihood ratio at most (1 - g) / g between ANY two
    inputs: epsilon = ln((1 - g) / g). For one qubit and r = 0 this is exactly
    `zhou_ying_epsilon(p1, 2)`.

    Thermal relaxation is not unital (it pushes towards |0>), which breaks the damping
    argument: with t1/t2 set only the readout flips count, epsilon = ln((1 - r) / r).
    No noise, or a device snapshot (not modelled here), gives infinity.
    """
    if noise.kind != "parametric":
        return math.inf
    r = noise.readout
    if noise.t1_us is not None:
        return math.inf if r == 0 else math.log((1 - r) / r)
    g = (1.0 - (1.0 - noise.p1) * (1.0 - 2.0 * r)) / 2.0
    return math.inf if g == 0 else math.log((1.0 - g) / g)


def compose_pure_dp(eps0: float, k: int, delta: float) -> float:
    """Smallest epsilon such that k adaptive eps0-DP mechanisms are (epsilon, delta)-DP.

    The optimal composition theorem (Kairouz, Oh and Viswanath 2015, Thm 3.3): the k-fold
    randomized response with eps0 is the worst case, and its privacy loss is
    L = eps0 (2T - k) with T ~ Binomial(k, e^eps0 / (1 + e^eps0)), so
    delta(eps) = E[(1 - e^(eps - L))_+], inverted here for eps. delta = 0 gives k eps0.
    """
    if k < 0 or eps0 < 0:
        raise ValueError(f"need k >= 0 and eps0 >= 0 (got {k}, {eps0})")
    if k == 0 or eps0 == 0:
        return 0.0
    if math.isinf(eps0):
        return math.inf
    if delta <= 0:
        return k * eps0
    from scipy import optimize, special, stats  # here: a runner or aggregator never needs scipy

    t = np.arange(k + 1)
    loss = eps0 * (2 * t - k)  # (k+1,)
    log_p = stats.binom.logpmf(t, k, special.expit(eps0))

    def delta_of(eps: float) -> float:
        hit = loss > eps
        return float(np.sum(np.exp(log_p[hit]) * -np.expm1(eps - loss[hit])))

    if delta_of(0.0) <= delta:
        return 0.0
    return float(optimize.brentq(lambda e: delta_of(e) - delta, 0.0, k * eps0, xtol=1e-9))


def evaluations_per_example(num_parameters: int, epochs: int = 1) -> int:
    """Circuit evaluations of one training example per round with parameter-shift gradients.

    Each step evaluates the circuit once forward and twice per circuit parameter (encoding
    slots and weights, Eq. 5): epochs * (1 + 2 * num_parameters).
    """
    if num_parameters < 0 or epochs < 1:
        raise ValueError(f"need num_parameters >= 0 and epochs >= 1 ({num_parameters}, {epochs})")
    return epochs * (1 + 2 * num_parameters)


class QuantumPrivacyBound(BaseModel):
    """The (epsilon, delta) the device noise gives the quantum layer's measured outputs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epsilon: float  # after composing `outcomes` shot outcomes (inf: no guarantee)
    delta: float
    outcome_epsilon: float  # pure epsilon of one shot outcome
    outcomes: int  # shot outcomes per training example composed
    scope: str = QUANTUM_SCOPE

    def metrics(self) -> dict[str, float]:
        return {
            "qdp_epsilon": self.epsilon,
            "qdp_delta": self.delta,
            "qdp_outcome_epsilon": self.outcome_epsilon,
            "qdp_outcomes": float(self.outcomes),
        }


def quantum_privacy_bound(
    noise: NoiseConfig,
    *,
    shots: int | None,
    observables: int,
    evaluations: int,
    rounds: int = 1,
    delta: float = 1e-5,
) -> QuantumPrivacyBound:
    """(epsilon, delta) of a quantum layer's measured outputs, from its noise and shots.

    Per training example the layer releases rounds x evaluations x observables x shots
    independent +-1 outcomes (the shot executors estimate every observable from its own
    shots), each `outcome_epsilon(noise)`-DP against any other example; they compose by
    `compose_pure_dp`. Exact expectation values (shots None) carry no noise: infinity.

    What it covers: the quantum layer's outputs only. It does NOT cover the update a client
    sends (a hybrid model's encoder and head see the data without quantum noise), so it
    never replaces `PrivacyAccountant`. Realistic noise levels give a very large epsilon:
    the device noise alone is a weak privacy mechanism, and this says how weak.
    """
    if observables < 1 or evaluations < 0 or rounds < 0:
        raise ValueError("need observables >= 1, evaluations >= 0, rounds >= 0")
    k = 0 if shots is None else rounds * evaluations * observables * shots
    eps0 = math.inf if shots is None else outcome_epsilon(noise)
    epsilon = (
        math.inf if shots is None and rounds * evaluations > 0 else compose_pure_dp(eps0, k, delta)
    )
    return QuantumPrivacyBound(epsilon=epsilon, delta=delta, outcome_epsilon=eps0, outcomes=k)


__all__ = [
    "QUANTUM_SCOPE",
    "RDP_ORDERS",
    "AccountantName",
    "PrivacyAccountant",
    "PrivacyConfig",
    "PrivacyMode",
    "QuantumPrivacyBound",
    "accounted_multiplier",
    "add_central_noise",
    "calibrate_noise_multiplier",
    "clip_update",
    "compose_pure_dp",
    "epsilon_after",
    "evaluations_per_example",
    "gaussian_dp_epsilon",
    "gaussian_noise",
    "noise_rng",
    "noise_std",
    "outcome_epsilon",
    "private_mean",
    "privatize_local",
    "quantum_privacy_bound",
    "resolve_noise_multiplier",
    "sample_rate",
    "zhou_ying_epsilon",
]
