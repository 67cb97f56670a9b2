"""The ProxylessNAS space beside MobileNetV3, and OFA's kernel-transform matrices."""

import random

import pytest
import torch
from torch import nn

from tests.test_supernet import hook_macs
from workers.supernet.profile import profile_subnet
from workers.supernet.space import StageConfig, SubnetConfig, mobilenetv3_space, proxyless_space
from workers.supernet.supernet import ElasticSupernet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_proxyless_layout_matches_the_paper_space():
    space = proxyless_space(1.0, resolution=224)
    assert space.name == "ofa_proxyless" and space.stem_width == 32 and space.stem_act == "relu6"
    assert space.first_block_width == 16
    assert [s.width for s in space.stages] == [24, 40, 80, 96, 192, 320]
    assert [s.stride for s in space.stages] == [2, 2, 2, 1, 2, 1]
    assert {s.act for s in space.stages} == {"relu6"} and not any(s.se for s in space.stages)
    assert [s.max_depth for s in space.stages] == [4, 4, 4, 4, 4, 1]
    assert space.stages[-1].elastic_depth is False
    assert space.final_expand_width == 1280 and not space.has_feature_mix
    # The 320 block has depth 1 in every subnet; the five stages before it are elastic.
    assert space.smallest().depths == (2, 2, 2, 2, 2, 1) and space.largest().depths == (4, 4, 4, 4, 4, 1)
    rng = random.Random(0)
    assert {space.sample(rng).depths[-1] for _ in range(50)} == {1}
    with pytest.raises(ValueError, match="always has 1"):
        bad = space.largest()
        space.validate(SubnetConfig(bad.stages[:-1] + (StageConfig((7, 7), (6, 6)),), bad.resolution))


@pytest.mark.parametrize("cifar,resolution", [(False, 64), (True, 32)])
def test_proxyless_supernet_matches_its_standalone_subnets_and_profile(cifar, resolution):
    space = proxyless_space(0.5, cifar=cifar, resolution=resolution)
    torch.manual_seed(0)
    net = ElasticSupernet(space, 10).eval()
    x = torch.randn(2, 3, resolution, resolution)
    rng = random.Random(1)
    for config in (space.smallest(), space.largest(), space.sample(rng), space.sample(rng)):
        net.set_active_subnet(config)
        standalone = net.get_active_subnet().eval()
        with torch.no_grad():
            assert torch.allclose(net(x), standalone(x), atol=1e-5)
        profile = profile_subnet(space, config, 10)
        assert profile.macs == hook_macs(standalone, resolution)
        assert profile.params == sum(p.numel() for p in standalone.parameters())
    assert not any(isinstance(m, nn.Hardswish) for m in net.modules())  # ReLU6 throughout


def test_proxyless_is_smaller_than_mobilenetv3_at_the_bottom_and_both_span_a_range():
    proxyless, mbv3 = proxyless_space(1.0, resolution=224), mobilenetv3_space(1.0, resolution=224)
    p_small, p_large = (profile_subnet(proxyless, c, 1000).macs for c in (proxyless.smallest(), proxyless.largest()))
    m_small, m_large = (profile_subnet(mbv3, c, 1000).macs for c in (mbv3.smallest(), mbv3.largest()))
    assert p_small < p_large and m_small < m_large
    assert 100e6 < p_small < 250e6 and 400e6 < p_large < 800e6  # the OFA ProxylessNAS range at 224


def test_kernel_transforms_start_as_centre_crops_and_learn_their_own_small_kernels():
    plain = mobilenetv3_space(0.35, cifar=True, resolution=16)
    transformed = mobilenetv3_space(0.35, cifar=True, resolution=16, kernel_transforms=True)
    torch.manual_seed(0)
    a = ElasticSupernet(plain, 10).eval()
    torch.manual_seed(0)
    b = ElasticSupernet(transformed, 10).eval()
    names = {n for n, _ in b.named_parameters()} - {n for n, _ in a.named_parameters()}
    assert names and all(n.split(".")[-1] in ("7to5", "5to3") for n in names)
    assert b.stages[0][0].depthwise.transforms["7to5"].shape == (25, 25)
    assert b.stages[0][0].depthwise.transforms["5to3"].shape == (9, 9)
    b.load_state_dict(a.state_dict(), strict=False)
    # Train-mode BN (batch statistics) and no dropout: outputs depend on every weight, deterministically.
    for net in (a, b):
        net.train()
        net.active_dropout = 0.0
    x = torch.randn(4, 3, 16, 16)
    small = plain.smallest()
    for net in (a, b):
        net.set_active_subnet(small)
    layer = b.stages[0][0].depthwise
    channels = layer.conv.weight.size(0)
    with torch.no_grad():
        assert torch.equal(layer.kernel_weight(channels, 3), layer.conv.weight[:, :, 2:5, 2:5])
        assert torch.allclose(a(x), b(x), atol=1e-6)  # identity matrices: the centre crop, as without transforms
        for block in [blk for stage in b.stages for blk in stage]:
            block.depthwise.transforms["5to3"].add_(0.2 * torch.randn(9, 9))
        assert not torch.allclose(layer.kernel_weight(channels, 3), layer.conv.weight[:, :, 2:5, 2:5])
        assert not torch.allclose(a(x), b(x), atol=1e-4)
        standalone = b.get_active_subnet().train()
        assert torch.allclose(b(x), standalone(x), atol=1e-5)  # export applies the transforms
        b.set_active_subnet(plain.largest())
        a.set_active_subnet(plain.largest())
        assert torch.allclose(a(x), b(x), atol=1e-6)  # the 7x7 kernel is untouched
    b.set_active_subnet(small)
    b(x).sum().backward()
    assert layer.transforms["5to3"].grad is not None and layer.transforms["7to5"].grad is not None
