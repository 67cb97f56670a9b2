"""Evaluation sharded over workers gives what one process gives, on an ImageFolder of real JPEG files.

Each shard holds only its own images, as uint8; BN statistics merged over shards
equal those of one calibration over every batch, and the summed counts equal
top-1 computed the way evaluation worked before sharding (float32 images
normalised on the host, torchvision's ImageFolder).
"""

from __future__ import annotations

import pytest
import torch
from torchvision import datasets, transforms

from tests.conftest import one_thread_float32
from tests.disk_formats import write_image_folder
from workers.calibration import calibrate_bn
from workers.data.device_input import IMAGENET_MEAN, IMAGENET_STD
from workers.evaluation import Counts, Shard, SubnetEvaluator, count_correct, merge_bn_stats
from workers.job import WorkerSpec
from workers.supernet.space_spec import build_space
from workers.supernet.supernet import build_supernet

RESOLUTION = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = write_image_folder(tmp_path_factory.mktemp("folder"), classes=4, train=10, val=7, size=44)
    spec = WorkerSpec(
        run="shards",
        dataset={"name": "imagefolder", "root": str(root), "resolution": RESOLUTION},
        space={"width_mult": 0.35, "cifar_variant": True},
        method={"name": "deps", "epochs": 1},
        evaluation={"calibration_images": 30, "calibration_batch_size": 8, "test_batch_size": 5},
    )
    space = build_space(spec)
    torch.manual_seed(0)
    net = build_supernet(spec, space, 4)
    for m in net.modules():  # a trained network's scales: not the fresh 1/0 of every BN
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    configs = [space.largest(), space.smallest(), space.sample(__import__("random").Random(1))]
    return root, spec, space, net.state_dict(), configs


def _sharded(spec, state, configs, shards: int) -> tuple[list[Counts], list, list[SubnetEvaluator]]:
    evaluators = [SubnetEvaluator(spec, state, 4, 1, Shard(k, shards)) for k in range(shards)]
    data = [c.to_dict() for c in configs]
    calibrated = [e.calibrate(data) for e in evaluators]
    merged = [merge_bn_stats([c[i][0] for c in calibrated]) for i in range(len(data))]
    counted = [e.count(data, merged) for e in evaluators]
    totals = [sum((c[i][0] for c in counted), Counts(0, 0, 0)) for i in range(len(data))]
    return totals, merged, evaluators


def test_each_shard_holds_only_its_images_as_uint8(setup):
    _, spec, _, state, configs = setup
    with one_thread_float32():
        _, _, evaluators = _sharded(spec, state, configs[:1], 3)
    image_bytes = 3 * RESOLUTION * RESOLUTION
    held = [sum(x.numel() for x, _ in e.test) for e in evaluators]
    assert [sum(y.numel() for _, y in e.test) for e in evaluators] == [10, 9, 9]  # 28 test images, every 3rd
    assert held == [10 * image_bytes, 9 * image_bytes, 9 * image_bytes]
    assert all(x.dtype == torch.uint8 for e in evaluators for x, _ in e.test)
    # 30 calibration images in batches of 8: batches 0 and 3 (8 + 6 images), 1, 2.
    assert [sum(x.size(0) for x in e.calibration) for e in evaluators] == [14, 8, 8]
    assert all(x.dtype == torch.uint8 for e in evaluators for x in e.calibration)


def test_merged_shards_equal_one_process_and_the_float_path_of_before(setup):
    root, spec, space, state, configs = setup
    with one_thread_float32():
        totals, merged, _ = _sharded(spec, state, configs, 3)
        (alone,), _, _ = _sharded(spec, state, configs[:1], 1)
        one = SubnetEvaluator(spec, state, 4, 1)
        single = one.calibrate([configs[0].to_dict()])[0][0]

        # Before: torchvision's ImageFolder, float32 normalised on the host, one calibration over every batch.
        host = transforms.Compose(
            [
                transforms.Resize(round(RESOLUTION / 0.875)),
                transforms.CenterCrop(RESOLUTION),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )
        train = datasets.ImageFolder(str(root / "train"), transform=host)
        val = datasets.ImageFolder(str(root / "val"), transform=host)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:30].tolist()
        calibration = torch.stack([train[i][0] for i in order])
        test = [val[i] for i in range(len(val))]
        images, labels = torch.stack([x for x, _ in test]), torch.tensor([y for _, y in test])
        before = []
        for config in configs:
            net = build_supernet(spec, space, 4)
            net.load_state_dict(state)
            net.active_dropout = 0.0
            net.set_active_subnet(config)
            calibrate_bn(net, calibration.split(8))
            before.append(count_correct(net, zip(images.split(5), labels.split(5)), 4))

    assert totals == before and totals[0] == alone
    assert all(t.images == 28 for t in totals) and merged[0].images == 30
    for name, (mean, var, batches) in single.stats.items():
        other_mean, other_var, other_batches = merged[0].stats[name]
        assert batches == other_batches == 4
        torch.testing.assert_close(other_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(other_var, var, rtol=1e-5, atol=1e-6)


def test_a_subnet_is_calibrated_evaluated_and_costed_at_its_own_resolution(setup):
    from dataclasses import replace

    from workers.supernet.profile import profile_subnet

    _, spec, _, state, _ = setup
    elastic = spec.model_copy(update={"space": spec.space.model_copy(update={"resolutions": (16, 24, 32)})})
    space = build_space(elastic)
    assert space.resolutions == (16, 24, 32) and space.smallest().resolution == 16
    assert space.largest().resolution == 32
    with one_thread_float32():
        evaluator = SubnetEvaluator(elastic, state, 4, 1)
        seen: list[int] = []
        evaluator.net.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[-1]))
        config = replace(space.largest(), resolution=24)
        (row,) = evaluator.evaluate([config.to_dict()])
    assert set(seen) == {24}  # decoded at 32, resized on the device for calibration and test alike
    assert row["resolution"] == 24 and row["macs"] == profile_subnet(space, config, 4).macs
    assert row["macs"] < profile_subnet(space, space.largest(), 4).macs
