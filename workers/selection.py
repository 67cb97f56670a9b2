"""Which subnets to evaluate: the smallest, the largest, and others spread over the MAC range."""

from __future__ import annotations

import random

from workers.supernet.profile import profile_subnet
from workers.supernet.space import SearchSpace, SubnetConfig


def spread_over_macs(
    space: SearchSpace, num_classes: int, count: int, seed: int, pool_size: int = 1000
) -> list[SubnetConfig]:
    """Smallest, largest, and `count` random subnets whose MACs are closest to evenly spaced targets."""
    smallest, largest = space.smallest(), space.largest()
    chosen = {smallest.subnet_id: smallest, largest.subnet_id: largest}
    lo = profile_subnet(space, smallest, num_classes).macs
    hi = profile_subnet(space, largest, num_classes).macs
    rng = random.Random(seed)
    pool = {}
    for _ in range(max(pool_size, 20 * count)):
        config = space.sample(rng)
        pool.setdefault(config.subnet_id, (profile_subnet(space, config, num_classes).macs, config))
    candidates = [v for k, v in pool.items() if k not in chosen]
    for i in range(1, count + 1):
        if not candidates:
            break
        target = lo + (hi - lo) * i / (count + 1)
        best = min(range(len(candidates)), key=lambda j: abs(candidates[j][0] - target))
        config = candidates.pop(best)[1]
        chosen[config.subnet_id] = config
    return list(chosen.values())
