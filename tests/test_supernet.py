import random

import pytest
import torch

from workers.supernet.profile import profile_subnet
from workers.supernet.space import StageConfig, SubnetConfig, mobilenetv3_space
from workers.supernet.supernet import ElasticSupernet


def hook_macs(model: torch.nn.Module, resolution: int) -> int:
    """MACs of conv and linear layers, counted by running the model."""
    total = 0

    def conv(m, _, out):
        nonlocal total
        total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, _, out):
        nonlocal total
        total += m.in_features * m.out_features

    handles = [
        m.register_forward_hook(conv if isinstance(m, torch.nn.Conv2d) else linear)
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, resolution, resolution))
    for h in handles:
        h.remove()
    return total


def test_reference_sizes_of_the_ofa_mobilenetv3_space():
    # METHODS.md: at 224, w1.0: smallest 121 M, largest 566 M MACs (3.4 M / 7.7 M params); kernel 7 smallest 151 M.
    space = mobilenetv3_space(1.0, cifar=False, resolution=224)
    small, large = profile_subnet(space, space.smallest(), 1000), profile_subnet(space, space.largest(), 1000)
    assert round(small.macs / 1e6) == 121 and round(large.macs / 1e6) == 566
    assert round(small.params / 1e6, 1) == 3.4 and round(large.params / 1e6, 1) == 7.7
    k7 = mobilenetv3_space(1.0, cifar=False, resolution=224, kernel_choices=(7,))
    assert round(profile_subnet(k7, k7.smallest(), 1000).macs / 1e6) == 151
    cifar = mobilenetv3_space(1.0, cifar=True, resolution=32)
    assert 35 <= profile_subnet(cifar, cifar.smallest(), 10).macs / 1e6 <= 45
    assert round(profile_subnet(cifar, cifar.largest(), 10).macs / 1e6) == 180


@pytest.mark.parametrize("width,cifar,resolution", [(1.0, False, 64), (0.35, True, 16), (1.2, True, 32)])
def test_profile_from_config_equals_counts_of_the_extracted_module(width, cifar, resolution):
    space = mobilenetv3_space(width, cifar=cifar, resolution=resolution)
    net = ElasticSupernet(space, num_classes=10)
    rng = random.Random(1)
    for config in [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(4)]:
        net.set_active_subnet(config)
        subnet = net.get_active_subnet()
        profile = profile_subnet(space, config, 10)
        assert profile.macs == hook_macs(subnet, resolution)
        assert profile.params == sum(p.numel() for p in subnet.parameters())


def test_extracted_subnet_outputs_equal_the_supernet_with_that_subnet_active():
    torch.manual_seed(0)
    space = mobilenetv3_space(0.5, cifar=True, resolution=32)
    net = ElasticSupernet(space, num_classes=10, bn_momentum=0.5)
    x = torch.randn(8, 3, 32, 32)
    rng = random.Random(0)
    net.train()
    for _ in range(3):  # move the BN statistics away from their initial values
        net.set_active_subnet(space.sample(rng))
        net(x)
    net.eval()
    for config in [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(5)]:
        net.set_active_subnet(config)
        subnet = net.get_active_subnet().eval()
        with torch.no_grad():
            torch.testing.assert_close(subnet(x), net(x), rtol=0, atol=1e-5)
        assert (
            sum(isinstance(m, torch.nn.Conv2d) for m in subnet.modules())
            < sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
            or config == space.largest()
        )


def test_extracted_subnet_is_independent_of_the_supernet():
    space = mobilenetv3_space(0.35, cifar=True, resolution=16)
    net = ElasticSupernet(space, num_classes=10).eval()
    net.set_active_subnet(space.smallest())
    subnet = net.get_active_subnet().eval()
    x = torch.randn(2, 3, 16, 16)
    before = subnet(x)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    torch.testing.assert_close(subnet(x), before)


def test_subnet_id_is_stable_and_canonical():
    a = SubnetConfig((StageConfig((3, 5), (3, 4)),), 32)
    b = SubnetConfig((StageConfig((3.0, 5.0), (3.0, 4.0)),), 32)
    assert a == b and a.subnet_id == b.subnet_id
    assert SubnetConfig.from_json(a.to_json()) == a
    assert a.subnet_id == "025ea048536f5541"  # pinned: ids in stored results must never change
    c = SubnetConfig((StageConfig((3, 5), (3, 6)),), 32)
    assert c.subnet_id != a.subnet_id


def test_set_active_subnet_rejects_choices_outside_the_space():
    space = mobilenetv3_space(0.35, cifar=True, resolution=16, kernel_choices=(3, 5))
    net = ElasticSupernet(space, num_classes=10)
    bad = SubnetConfig(tuple(StageConfig((7, 3), (3, 3)) for _ in space.stages), 16)
    with pytest.raises(ValueError, match="kernel 7"):
        net.set_active_subnet(bad)


def test_sampled_subnets_use_only_the_spaces_choices():
    space = mobilenetv3_space(1.0, resolution=224, kernel_choices=(7,), depth_choices=(2, 4))
    rng = random.Random(3)
    for _ in range(50):
        config = space.sample(rng)
        space.validate(config)
        assert set(config.depths) <= {2, 4}
        assert all(k == 7 for s in config.stages for k in s.kernels)
