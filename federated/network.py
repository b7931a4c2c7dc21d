"""Simulated network conditions of a round: client links, a simulated clock, stragglers.

The paper's evaluation (section 6.1.2) simulates "realistic ... network conditions". The
runs here train on one machine, so the network is a model beside the real clock:

Links. Client k's link is drawn once, from a generator seeded by (run seed,
`NETWORK_STREAM`, k) alone: the same client has the same link in every round, whatever
the number of clients, the round or the order clients are met in. Four standard normal
draws z_0..z_3, always all four and in this order, give

    down_k    = down_mbps  * exp(bandwidth_sigma * z_0)    Mbit/s
    up_k      = up_mbps    * exp(bandwidth_sigma * z_1)    Mbit/s
    latency_k = latency_ms * exp(latency_sigma   * z_2)    ms, per transfer
    speed_k   = compute_scale * exp(compute_sigma * z_3)   factor on compute time

Lognormal: positive and right-skewed, as measured access-link throughputs and round-trip
times are; its two numbers, the median and the spread of the logarithm, are what one reads
off a speed-test distribution (sigma 0: every client gets the median).

One synchronous round (download w_t, train, upload the update), in simulated seconds:

    download_k = 8 * bytes_down   / (down_k * 1e6) + latency_k / 1000
    compute_k  = speed_k * c_k
    upload_k   = 8 * bytes_up_k   / (up_k   * 1e6) + latency_k / 1000
    T_k        = download_k + compute_k + upload_k

c_k is the client's measured training seconds (`ClientUpdate.seconds`), or, with
`seconds_per_example` set, examples_k * epochs * seconds_per_example: measured seconds vary
from run to run, the modelled ones do not, so only the latter give the same stragglers for
the same seed. With a deadline D the stragglers are the clients with T_k > D: their updates
are dropped and the server waited D; otherwise the round takes max_k T_k over the clients
kept (0 when none came back).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from federated.messages import ClientUpdate

NETWORK_STREAM: Final = 0x4E4554  # "NET": SeedSequence word of the links' draws
BITS_PER_BYTE: Final = 8
BITS_PER_MBIT: Final = 1e6


class NetworkConfig(BaseModel):
    """The simulated network: link distributions, compute speeds and the round deadline."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    down_mbps: float = Field(20.0, gt=0.0, description="median downlink bandwidth, Mbit/s")
    up_mbps: float = Field(5.0, gt=0.0, description="median uplink bandwidth, Mbit/s")
    latency_ms: float = Field(50.0, ge=0.0, description="median latency per transfer, ms")
    bandwidth_sigma: float = Field(0.5, ge=0.0, description="spread of log bandwidth (0: median)")
    latency_sigma: float = Field(0.5, ge=0.0, description="spread of log latency (0: median)")
    compute_scale: float = Field(1.0, gt=0.0, description="median factor on compute seconds")
    compute_sigma: float = Field(0.0, ge=0.0, description="spread of log compute factor")
    seconds_per_example: float | None = Field(
        None, gt=0.0, description="None: measured training seconds; else examples x epochs x this"
    )
    deadline_s: float | None = Field(
        None, gt=0.0, description="round deadline, simulated seconds; later clients straggle"
    )

    @model_validator(mode="after")
    def _check(self) -> NetworkConfig:
        if not self.enabled and self.deadline_s is not None:
            raise ValueError("deadline_s needs enabled: true (the deadline is on simulated time)")
        return self


class ClientLink(BaseModel):
    """One client's drawn link and compute-speed factor."""

    model_config = ConfigDict(frozen=True)

    client_id: int
    down_mbps: float
    up_mbps: float
    latency_s: float
    speed: float  # factor on the client's compute seconds


class ClientTiming(BaseModel):
    """One client's simulated round: download, compute, upload (seconds)."""

    model_config = ConfigDict(frozen=True)

    client_id: int
    download_s: float
    compute_s: float
    upload_s: float

    @property
    def total_s(self) -> float:
        return self.download_s + self.compute_s + self.upload_s


class RoundTiming(BaseModel):
    """A round on the simulated clock: each client's timing, the stragglers, the round."""

    model_config = ConfigDict(frozen=True)

    timings: tuple[ClientTiming, ...]
    stragglers: tuple[int, ...]  # client ids, ascending
    round_s: float

    def metrics(self) -> dict[str, float]:
        """net.sim_round_s, means of the transfers over the clients that answered, stragglers."""
        downloads = [t.download_s for t in self.timings]
        uploads = [t.upload_s for t in self.timings]
        return {
            "net.sim_round_s": self.round_s,
            "net.download_s_mean": float(np.mean(downloads)) if downloads else 0.0,
            "net.upload_s_mean": float(np.mean(uploads)) if uploads else 0.0,
            "net.stragglers": float(len(self.stragglers)),
        }


def draw_link(config: NetworkConfig, seed: int, client_id: int) -> ClientLink:
    """Client `client_id`'s link: four lognormal draws from (seed, NETWORK_STREAM, client)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, NETWORK_STREAM, client_id]))
    z = rng.standard_normal(4)
    return ClientLink(
        client_id=client_id,
        down_mbps=config.down_mbps * math.exp(config.bandwidth_sigma * z[0]),
        up_mbps=config.up_mbps * math.exp(config.bandwidth_sigma * z[1]),
        latency_s=config.latency_ms * math.exp(config.latency_sigma * z[2]) / 1000.0,
        speed=config.compute_scale * math.exp(config.compute_sigma * z[3]),
    )


def transfer_seconds(nbytes: int, mbps: float, latency_s: float) -> float:
    """Seconds to send `nbytes` over a `mbps` Mbit/s link with `latency_s` latency."""
    return BITS_PER_BYTE * nbytes / (mbps * BITS_PER_MBIT) + latency_s


def compute_seconds(
    config: NetworkConfig, link: ClientLink, *, measured_s: float, examples: int, epochs: int
) -> float:
    """speed_k * c_k: c_k measured, or examples x epochs x seconds_per_example when set."""
    if config.seconds_per_example is None:
        base = measured_s
    else:
        base = examples * epochs * config.seconds_per_example
    return link.speed * base


def client_timing(
    link: ClientLink, *, bytes_down: int, bytes_up: int, compute_s: float
) -> ClientTiming:
    """A client's simulated download, compute and upload seconds."""
    return ClientTiming(
        client_id=link.client_id,
        download_s=transfer_seconds(bytes_down, link.down_mbps, link.latency_s),
        compute_s=compute_s,
        upload_s=transfer_seconds(bytes_up, link.up_mbps, link.latency_s),
    )


def round_timing(timings: Iterable[ClientTiming], deadline_s: float | None) -> RoundTiming:
    """Stragglers (T_k > deadline) and the round's simulated time (synchronous FL)."""
    timings = tuple(sorted(timings, key=lambda t: t.client_id))
    late = tuple(t.client_id for t in timings if deadline_s is not None and t.total_s > deadline_s)
    # synchronous: the server waits for the slowest client, or gives up at the deadline
    round_s = float(deadline_s) if late else max((t.total_s for t in timings), default=0.0)
    return RoundTiming(timings=timings, stragglers=late, round_s=round_s)


class NetworkModel:
    """The run's simulated network: each client's link (drawn once, cached) and a round."""

    def __init__(self, config: NetworkConfig, seed: int):
        self.config = config
        self.seed = seed
        self._links: dict[int, ClientLink] = {}

    def link(self, client_id: int) -> ClientLink:
        link = self._links.get(client_id)
        if link is None:
            link = self._links[client_id] = draw_link(self.config, self.seed, client_id)
        return link

    def round(
        self, updates: Iterable[ClientUpdate], *, bytes_down: int, epochs: int
    ) -> RoundTiming:
        """The round of the clients that answered: w_t is `bytes_down`, their updates go up."""
        timings = []
        for update in updates:
            link = self.link(update.client_id)
            compute = compute_seconds(
                self.config,
                link,
                measured_s=update.seconds,
                examples=update.num_samples,
                epochs=epochs,
            )
            timings.append(
                client_timing(
                    link, bytes_down=bytes_down, bytes_up=update.nbytes, compute_s=compute
                )
            )
        return round_timing(timings, self.config.deadline_s)
