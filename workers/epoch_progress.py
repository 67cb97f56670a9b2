"""The epoch in flight, as a step checkpoint keeps it: where it is, what it has summed, every rank's RNG.

A run stopped midway by its time limit saves the model and optimiser with an
`EpochProgress`; the requeued job restores them, starts the sampler after the
samples already trained (`EpochTaggedSampler.resume_at`) and every rank's
generators where they were, and goes on from that step. Subnets (the step RNG),
augmentations (seeded per sample) and the resolution (the step RNG) are
functions of (seed, epoch, step) already; the generators cover dropout and
anything else drawing from the global streams. The restored epoch's ledger row
is the whole epoch's: its losses sum both parts and its wall time adds the
time before the stop.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class RankProgress:
    """One rank's share of the epoch so far."""

    loss_sum: float
    subnet_loss_sum: float
    subnet_losses: int
    subnets: int
    rng: dict


@dataclass(frozen=True)
class EpochProgress:
    epoch: int
    step: int  # the next step to train
    lr: float
    wall_seconds: float  # of the steps so far
    overhead_seconds: float  # before the epoch's first step
    ranks: list[RankProgress]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EpochProgress:
        return cls(**{**data, "ranks": [RankProgress(**r) for r in data["ranks"]]})

    def of(self, rank: int, world: int) -> RankProgress | None:
        """`rank`'s share, if this progress was saved by a group of the same size (else it cannot be resumed)."""
        return self.ranks[rank] if len(self.ranks) == world else None


def rng_state(device: torch.device) -> dict:
    """This process's generators, in types `torch.load(weights_only=True)` reads back."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def gather_ranks(mine: RankProgress, world: int) -> list[RankProgress]:
    """Every rank's progress, in rank order, on every rank (a collective: all ranks call it)."""
    if world == 1 or not (dist.is_available() and dist.is_initialized()):
        return [mine]
    everyone: list[RankProgress | None] = [None] * world
    dist.all_gather_object(everyone, mine)
    return [p for p in everyone if p is not None]
