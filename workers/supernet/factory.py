"""Building the search space and supernet a job spec describes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workers.supernet.space import SPACES, SearchSpace
from workers.supernet.supernet import ElasticSupernet

if TYPE_CHECKING:
    from orchestrator.spec import JobSpec


def build_space(spec: JobSpec) -> SearchSpace:
    s = spec.space
    return SPACES[s.name](
        width_mult=s.width_mult,
        cifar=s.cifar_variant,
        resolution=spec.dataset.resolution,
        kernel_choices=s.kernel_choices,
        expand_choices=s.expand_choices,
        depth_choices=s.depth_choices,
        kernel_transforms=s.kernel_transforms,
    )


def build_supernet(spec: JobSpec, space: SearchSpace, num_classes: int) -> ElasticSupernet:
    return ElasticSupernet(space, num_classes, dropout=spec.space.dropout, bn_momentum=spec.space.bn_momentum)
