"""DGIoUMetric against IoUs computed by hand from tiny label maps."""
import logging
import math

import numpy as np
import pytest
import torch
from mmengine.logging import MMLogger

import soma  # noqa: F401
from soma.evaluation import DGIoUMetric

CLASSES = ('a', 'b', 'c')


def _sample(path, pred, gt):
    return dict(img_path=path, pred_sem_seg=dict(data=torch.tensor([pred])),
                gt_sem_seg=dict(data=torch.tensor([gt])))


def _metric(**kwargs):
    metric = DGIoUMetric(**kwargs)
    metric.dataset_meta = dict(classes=CLASSES)
    return metric


# domain "fog": one image; domain "night": two images. 255 is ignored.
FOG = _sample('data/fog/leftImg8bit/val/x/1.png', [[0, 0, 1], [1, 2, 2]], [[0, 1, 1], [1, 2, 255]])
NIGHT1 = _sample('data/night/leftImg8bit/val/x/1.png', [[0, 0], [0, 0]], [[0, 0], [1, 1]])
NIGHT2 = _sample('data/night/leftImg8bit/val/x/2.png', [[1, 1], [2, 2]], [[1, 1], [0, 0]])


def _hand():
    # fog, valid pixels: pred 0 0 1 1 2 / gt 0 1 1 1 2
    # class 0: I=1, U=|{p=0} u {g=0}| = 2 -> 1/2; class 1: I=2, U=3 -> 2/3; class 2: I=1, U=1 -> 1
    fog = [1 / 2, 2 / 3, 1.0]
    # night (both images): pred 0 0 0 0 1 1 2 2 / gt 0 0 1 1 1 1 0 0
    # class 0: I=2, U=6 -> 1/3; class 1: I=2, U=4 -> 1/2; class 2: I=0, U=2 -> 0
    night = [1 / 3, 1 / 2, 0.0]
    return fog, night


def test_per_domain_and_mean_miou_match_hand_computation():
    # the batch mixes domains: each sample must go by its own path (the original release
    # assigned the whole batch by its first sample)
    metric = _metric(dataset_keys=['fog/', 'night/'])
    metric.process({}, [NIGHT1, FOG])
    metric.process({}, [NIGHT2])
    out = metric.compute_metrics(metric.results)
    fog, night = _hand()
    assert out['fog_mIoU'] == pytest.approx(round(np.mean(fog) * 100, 2))
    assert out['night_mIoU'] == pytest.approx(round(np.mean(night) * 100, 2))
    # the mean of the reported (2-decimal) domain values, itself not rounded (release)
    assert out['mean_mIoU'] == pytest.approx(
        (round(np.mean(fog) * 100, 2) + round(np.mean(night) * 100, 2)) / 2, abs=1e-12)
    # aAcc: fog 4 of 5, night 4 of 8
    assert out['fog_aAcc'] == pytest.approx(80.0)
    assert out['night_aAcc'] == pytest.approx(50.0)


def test_mean_miou_is_not_rounded():
    # rain: pred 0 0 1 / gt 0 0 0 -> class 0: I=2, U=3; class 1: I=0, U=1 -> mIoU 33.33
    rain = _sample('data/rain/leftImg8bit/val/x/1.png', [[0, 0, 1]], [[0, 0, 0]])
    metric = _metric(dataset_keys=['fog/', 'rain/'])
    metric.process({}, [FOG, rain])
    out = metric.compute_metrics(metric.results)
    assert out['fog_mIoU'] == 72.22 and out['rain_mIoU'] == 33.33  # as IoUMetric rounds them
    assert out['mean_mIoU'] == pytest.approx((72.22 + 33.33) / 2, abs=1e-12)  # 52.775
    assert abs(out['mean_mIoU'] - round(out['mean_mIoU'], 2)) > 1e-3  # a third decimal


def test_mean_used_keys_restricts_the_mean():
    metric = _metric(dataset_keys=['fog/', 'night/'], mean_used_keys=['night/'])
    metric.process({}, [FOG, NIGHT1, NIGHT2])
    out = metric.compute_metrics(metric.results)
    assert out['mean_mIoU'] == pytest.approx(out['night_mIoU'])


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_one_table_for_all_targets():
    logger, collect = MMLogger.get_current_instance(), _Collect()
    logger.addHandler(collect)
    metric = _metric(dataset_keys=['fog/', 'night/'])
    metric.process({}, [FOG, NIGHT1, NIGHT2])
    try:
        metric.compute_metrics(metric.results)
    finally:
        logger.removeHandler(collect)
    text = '\n'.join(collect.lines)
    assert text.count('| Class |') == 1
    header = [line for line in text.splitlines() if '| Class |' in line][0]
    assert 'fog' in header and 'night' in header
    miou_row = [line for line in text.splitlines() if line.startswith('|  mIoU')][0]
    assert '72.22' in miou_row and '27.78' in miou_row  # hand values, in %


def test_class_absent_everywhere_is_nan_and_ignored():
    metric = _metric(dataset_keys=['fog/'])
    sample = _sample('x/fog/1.png', [[0, 1]], [[0, 1]])  # class 2 never occurs
    metric.process({}, [sample])
    out = metric.compute_metrics(metric.results)
    assert out['fog_mIoU'] == pytest.approx(100.0)
    assert not math.isnan(out['mean_mIoU'])


def test_bad_input():
    with pytest.raises(ValueError, match='mean_used_keys'):
        DGIoUMetric(dataset_keys=['fog/'], mean_used_keys=['rain/'])
    with pytest.raises(ValueError, match='dataset_keys'):
        DGIoUMetric(dataset_keys='fog/')
    metric = _metric(dataset_keys=['fog/'])
    with pytest.raises(ValueError, match='snow/1.png'):
        metric.process({}, [_sample('data/snow/1.png', [[0]], [[0]])])
