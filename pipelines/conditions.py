"""A round under simulated conditions: network stragglers out, energy in (issue 10).

`Federation.step` calls `apply` right after the client pool answers, and `metrics` when it
assembles the round's record:

    result = conditions.apply(t, weights.nbytes, result)   # stragglers -> failures
    ... ledger admission, aggregation, evaluation ...
    extra |= conditions.metrics()                          # net.*, energy.*

`apply` puts every client that answered on the simulated network (`federated.network`:
its drawn link, w_t down, its update up, its compute time); a client past
`network.deadline_s` is a straggler: its update leaves the round's updates before the
ledger keeper sees it (never admitted, never aggregated; under secure aggregation its
masked input is missing from U3, a dropout the survivors' shares cover) and becomes a
`ClientFailure` whose reason starts with "straggler". Its training energy still counts:
it was spent.

`metrics` returns the round's

* net.sim_round_s, net.sim_clock_s (cumulative), net.download_s_mean, net.upload_s_mean,
  net.stragglers (only with network.enabled; the real clock is `round_seconds`);
* energy.kwh, energy.co2_kg, energy.classical_kwh, energy.quantum_sim_kwh,
  energy.quantum_resource_kwh, energy.server_kwh, energy.total_kwh and
  energy.total_co2_kg (cumulative) (only with energy.enabled; `federated.energy`). The
  server's seconds are the driver's wall time from `apply` to `metrics`: ledger
  admission, aggregation and evaluation.

The two running totals are driver state: `state()` goes into the checkpoint and a
resumed run starts from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from actors.pool import RoundResult
from federated.energy import EnergyConfig, energy_metrics, round_energy
from federated.messages import ClientFailure, ClientUpdate
from federated.network import ClientTiming, NetworkConfig, NetworkModel, RoundTiming

if TYPE_CHECKING:
    from pipelines.config import ExperimentConfig


class RoundConditions:
    """The run's network model and energy account, applied to each round's result."""

    def __init__(
        self,
        network: NetworkConfig,
        energy: EnergyConfig,
        *,
        seed: int,
        epochs: int,
        state: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.network = NetworkModel(network, seed) if network.enabled else None
        self.energy = energy if energy.enabled else None
        self.epochs = epochs
        self.clock = clock
        self.sim_clock_s = 0.0
        self.total_kwh = 0.0
        self._round: tuple[float, list[ClientUpdate], dict[str, float]] | None = None
        if state:
            self.load_state(state)

    @classmethod
    def from_config(
        cls, config: ExperimentConfig, state: Mapping[str, float] | None = None
    ) -> RoundConditions:
        """From an `ExperimentConfig` (its network, energy, seed and epochs)."""
        return cls(
            config.network,
            config.energy,
            seed=config.seed,
            epochs=config.train.epochs,
            state=state,
        )

    @property
    def drops_updates(self) -> bool:
        """Whether `apply` may drop an update (a deadline makes stragglers)."""
        return self.network is not None and self.network.config.deadline_s is not None

    @property
    def active(self) -> bool:
        return self.network is not None or self.energy is not None

    def apply(self, t: int, weights_nbytes: int, result: RoundResult) -> RoundResult:
        """Round t's result without its stragglers, which become failures (else `result`)."""
        if not self.active:
            return result
        start = self.clock()
        updates = list(result.updates)
        net: dict[str, float] = {}
        if self.network is not None:
            timing = self.network.round(updates, bytes_down=weights_nbytes, epochs=self.epochs)
            self.sim_clock_s += timing.round_s
            net = timing.metrics() | {"net.sim_clock_s": self.sim_clock_s}
            result = drop_stragglers(t, result, timing, self.network.config.deadline_s)
        self._round = (start, updates, net)
        return result

    def metrics(self) -> dict[str, float]:
        """The last applied round's net.* and energy.* metrics (server time: until now)."""
        if self._round is None:
            return {}
        (start, updates, net), self._round = self._round, None
        if self.energy is None:
            return net
        energy = round_energy(self.energy, updates, server_seconds=self.clock() - start)
        self.total_kwh += energy.kwh
        return net | energy_metrics(energy, self.energy.grid_g_per_kwh, self.total_kwh)

    def state(self) -> dict[str, float]:
        """The running totals, for the checkpoint."""
        return {"sim_clock_s": self.sim_clock_s, "total_kwh": self.total_kwh}

    def load_state(self, state: Mapping[str, float]) -> None:
        self.sim_clock_s = float(state.get("sim_clock_s", 0.0))
        self.total_kwh = float(state.get("total_kwh", 0.0))


def straggler_reason(timing: ClientTiming, deadline_s: float) -> str:
    return (
        f"straggler: simulated round time {timing.total_s:.3f}s > deadline {deadline_s:g}s "
        f"(download {timing.download_s:.3f}s, compute {timing.compute_s:.3f}s, "
        f"upload {timing.upload_s:.3f}s)"
    )


def drop_stragglers(
    t: int, result: RoundResult, timing: RoundTiming, deadline_s: float | None
) -> RoundResult:
    """`result` with the stragglers' updates moved to failures, in id order (and no
    parts: the runners' answers in the store still hold the dropped updates)."""
    late = set(timing.stragglers)
    if not late or deadline_s is None:
        return result
    by_client = {c.client_id: c for c in timing.timings}
    stragglers = [
        ClientFailure(client_id=k, round=t, reason=straggler_reason(by_client[k], deadline_s))
        for k in sorted(late)
    ]
    return RoundResult(
        updates=[u for u in result.updates if u.client_id not in late],
        failures=sorted([*result.failures, *stragglers], key=lambda f: f.client_id),
    )
