import random

import torch

from workers.calibration import calibrate_bn
from workers.evaluation import Counts, count_correct
from workers.supernet.space import mobilenetv3_space
from workers.supernet.supernet import ElasticSupernet


def test_calibration_sets_bn_statistics_to_the_exact_data_average_for_the_active_subnet():
    torch.manual_seed(0)
    space = mobilenetv3_space(0.35, cifar=True, resolution=16)
    net = ElasticSupernet(space, num_classes=10)
    net.set_active_subnet(space.sample(random.Random(0)))
    data = torch.randn(64, 3, 16, 16) * 3 + 1
    net.eval()
    seen = calibrate_bn(net, data.split(16))
    assert seen == 64 and not net.training  # the mode it had before
    stem_bn = net.stem[1]
    with torch.no_grad():
        stem_out = net.stem[0](data)
    # The cumulative average of per-batch means over equal batches is the mean over all images.
    torch.testing.assert_close(stem_bn.running_mean, stem_out.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert stem_bn.momentum == 0.1  # restored after calibration


def test_calibration_repairs_a_subnet_whose_statistics_belong_to_another():
    torch.manual_seed(0)
    space = mobilenetv3_space(0.35, cifar=True, resolution=16)
    net = ElasticSupernet(space, num_classes=10, bn_momentum=1.0)
    net.active_dropout = 0.0
    data = torch.randn(32, 3, 16, 16)
    net.set_active_subnet(space.largest())
    net.train()
    net(data)  # statistics of the largest subnet
    net.set_active_subnet(space.smallest())
    net.eval()
    with torch.no_grad():
        stale = net(data)
    calibrate_bn(net, [data])
    with torch.no_grad():
        calibrated = net(data)
    net.train()
    with torch.no_grad():
        batch_stats = net(data)  # train mode normalises with this batch's own statistics
    # Running variances are unbiased, batch variances are not: close, not equal.
    assert (calibrated - batch_stats).abs().max() < 0.1 * (stale - batch_stats).abs().max()


def test_accuracy_counts_top1_and_top5():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10]

    logits = torch.zeros(4, 10)
    logits[0, 3] = 5  # right
    logits[1, 1], logits[1, 2] = 5, 4  # wrong at top-1, right at top-5
    logits[2, 0] = 5  # wrong everywhere? label 9 has the lowest score
    logits[2, 1:9] = torch.arange(8.0) + 1
    logits[3, 7] = 5  # right
    images = logits.view(4, 10, 1, 1)
    labels = torch.tensor([3, 2, 9, 7])
    batches = [(images[:3], labels[:3]), (images[3:], labels[3:])]
    counts = count_correct(Fixed(), batches, num_classes=10)
    assert counts == Counts(top1=2, top5=3, images=4) and counts.percent(10) == (50.0, 75.0)
