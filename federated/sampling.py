"""Seeds and client sampling, derived from (run seed, round, client).

Every random draw in a round comes from a generator built here from numbers
anyone can re-derive, so the same config and seed sample the same clients and
give each the same local seed, whatever the number of actors or their order.
"""

from __future__ import annotations

import numpy as np

SAMPLING_STREAM = 1
CLIENT_STREAM = 2


def derive_seed(*words: int) -> int:
    """A 63-bit seed that is a pure function of the given non-negative integers."""
    state = np.random.SeedSequence(list(words)).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def round_rng(seed: int, round_: int) -> np.random.Generator:
    """The generator that samples the clients of round `round_`."""
    return np.random.default_rng(np.random.SeedSequence([seed, round_, SAMPLING_STREAM]))


def client_seed(seed: int, round_: int, client_id: int) -> int:
    """The local-training seed of `client_id` in round `round_`."""
    return derive_seed(seed, round_, client_id, CLIENT_STREAM)


def sample_clients(n_clients: int, per_round: int, rng: np.random.Generator) -> list[int]:
    """`per_round` distinct client ids out of `n_clients`, uniformly, ascending."""
    if not 1 <= per_round <= n_clients:
        raise ValueError(f"cannot sample {per_round} of {n_clients} clients")
    if per_round == n_clients:
        return list(range(n_clients))
    return sorted(int(k) for k in rng.choice(n_clients, size=per_round, replace=False))
