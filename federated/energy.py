"""Energy and CO2 of a round, from CPU time, shots and a power model.

A model, not a meter: every term is a measured or counted quantity times a configured
constant, so a run's figures are reproducible given its timings and need no sensor, no
background sampling thread and no extra package. (CodeCarbon measures the host instead;
installing it would pull pandas 3, rich, typer and more, and its readings depend on
whatever else the machine runs. Green Algorithms, Lannelongue et al. 2021, estimates the
same way as here: time x cores x power per core x PUE x carbon intensity.)

Per round, in joules (W x s), each multiplied by the data-centre overhead `pue`:

    classical      = sum over classical and fallback updates of seconds_k * client_cores * W
    quantum_sim    = sum over quantum-path updates of seconds_k * client_cores * W
    quantum_res    = sum over updates of shots_k * J_shot(resource_k)
    server         = server_seconds * server_cores * W

seconds_k is the client's measured local training time (`ClientUpdate.seconds`); with one
torch thread per runner that is one busy core. The quantum path's seconds are the
classical simulation of the quantum resource (Aer, the exact executor): that is
"quantum_sim". A real QPU's own draw is `quantum_res`: shots times joules per shot, 0 for
simulators by default; a QPU's value is its system power divided by its shot rate (for
instance 25 kW at 10,000 shots/s is 2.5 J per shot: set it from the provider's figures).

Default W = 15 W per core: the order of a server CPU's thermal design power divided by its
cores (200-300 W over 16-24 cores), an assumption to replace with the host's figure.
kWh = J / 3.6e6; CO2 (kg) = kWh x grid intensity (g/kWh) / 1000; default 400 g/kWh, the
order of the world-average electricity mix; set the region's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from federated.messages import ClientUpdate

JOULES_PER_KWH: Final = 3.6e6
GRAMS_PER_KG: Final = 1000.0


class EnergyConfig(BaseModel):
    """The power model: watts per core, cores busy, PUE, joules per shot, grid intensity."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    watts_per_core: float = Field(15.0, ge=0.0, description="CPU power per busy core, W")
    client_cores: float = Field(1.0, gt=0.0, description="cores a client's training keeps busy")
    server_cores: float = Field(1.0, gt=0.0, description="cores the driver's work keeps busy")
    pue: float = Field(1.0, ge=1.0, description="power usage effectiveness (facility overhead)")
    grid_g_per_kwh: float = Field(400.0, ge=0.0, description="carbon intensity, gCO2 per kWh")
    joules_per_shot: float = Field(0.0, ge=0.0, description="every resource's J/shot by default")
    resource_joules_per_shot: dict[str, float] = Field(
        default_factory=dict, description="J/shot of named resources (resources[i].name)"
    )

    def shot_joules(self, resource: str | None) -> float:
        """Joules per shot on `resource` (the default for unnamed ones)."""
        if resource is None:
            return self.joules_per_shot
        return self.resource_joules_per_shot.get(resource, self.joules_per_shot)


class RoundEnergy(BaseModel):
    """One round's energy by part, kWh (PUE included)."""

    model_config = ConfigDict(frozen=True)

    classical_kwh: float = 0.0
    quantum_sim_kwh: float = 0.0
    quantum_resource_kwh: float = 0.0
    server_kwh: float = 0.0

    @property
    def kwh(self) -> float:
        return (
            self.classical_kwh + self.quantum_sim_kwh + self.quantum_resource_kwh + self.server_kwh
        )

    def co2_kg(self, grid_g_per_kwh: float) -> float:
        return co2_kg(self.kwh, grid_g_per_kwh)


def cpu_joules(seconds: float, cores: float, watts_per_core: float) -> float:
    """Energy of `cores` cores busy for `seconds` at `watts_per_core` each."""
    return seconds * cores * watts_per_core


def kwh(joules: float) -> float:
    return joules / JOULES_PER_KWH


def co2_kg(kwh_: float, grid_g_per_kwh: float) -> float:
    """Emissions of `kwh_` kWh at `grid_g_per_kwh` grams of CO2 per kWh, in kg."""
    return kwh_ * grid_g_per_kwh / GRAMS_PER_KG


def client_energy(
    config: EnergyConfig, updates: Iterable[ClientUpdate]
) -> tuple[float, float, float]:
    """(classical, quantum simulation, quantum resource) joules of the clients' updates."""
    classical = quantum_sim = resource = 0.0
    for u in updates:
        joules = cpu_joules(u.seconds, config.client_cores, config.watts_per_core)
        if u.path == "quantum":
            quantum_sim += joules
        else:  # classical, or a quantum task that fell back to the classical path
            classical += joules
        resource += u.shots * config.shot_joules(u.resource)
    return classical, quantum_sim, resource


def round_energy(
    config: EnergyConfig, updates: Iterable[ClientUpdate], server_seconds: float
) -> RoundEnergy:
    """The round's energy: its clients' updates and `server_seconds` of driver work."""
    classical, quantum_sim, resource = client_energy(config, updates)
    server = cpu_joules(server_seconds, config.server_cores, config.watts_per_core)
    return RoundEnergy(
        classical_kwh=kwh(classical) * config.pue,
        quantum_sim_kwh=kwh(quantum_sim) * config.pue,
        quantum_resource_kwh=kwh(resource) * config.pue,
        server_kwh=kwh(server) * config.pue,
    )


def energy_metrics(
    energy: RoundEnergy, grid_g_per_kwh: float, total_kwh: float
) -> dict[str, float]:
    """The round's energy.* metrics; `total_kwh`: the run's so far, this round included."""
    return {
        "energy.kwh": energy.kwh,
        "energy.co2_kg": energy.co2_kg(grid_g_per_kwh),
        "energy.classical_kwh": energy.classical_kwh,
        "energy.quantum_sim_kwh": energy.quantum_sim_kwh,
        "energy.quantum_resource_kwh": energy.quantum_resource_kwh,
        "energy.server_kwh": energy.server_kwh,
        "energy.total_kwh": total_kwh,
        "energy.total_co2_kg": co2_kg(total_kwh, grid_g_per_kwh),
    }
