"""DGVOCMetric: VOC 11-point AP per domain (by each sample's own path) and the mean,
checked on hand-made predictions whose AP is computed by hand, and against mmdet's
``eval_map`` (legacy +1 pixel boxes) on a box pair where the convention decides."""
import numpy as np
import pytest
import torch
from mmdet.evaluation.functional import bbox_overlaps, eval_map
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

import soma  # noqa: F401
from soma.evaluation.dg_voc_metric import DGVOCMetric, domain_of

DEFAULT_SCOPE = 'mmdet'  # see tests/conftest.py

CLASSES = ('bus', 'bike', 'car', 'motor', 'person', 'rider', 'truck')
KEYS = ['daytime_clear', 'Night-Sunny', 'dusk_rainy', 'night_rainy', 'daytime_foggy']


def sample(path, gt_boxes, gt_labels, pred_boxes, pred_scores, pred_labels):
    s = DetDataSample(metainfo=dict(img_path=path))
    s.gt_instances = InstanceData(bboxes=torch.tensor(gt_boxes, dtype=torch.float32).view(-1, 4),
                                  labels=torch.tensor(gt_labels, dtype=torch.long))
    s.ignored_instances = InstanceData(bboxes=torch.zeros(0, 4),
                                       labels=torch.zeros(0, dtype=torch.long))
    s.pred_instances = InstanceData(
        bboxes=torch.tensor(pred_boxes, dtype=torch.float32).view(-1, 4),
        scores=torch.tensor(pred_scores, dtype=torch.float32),
        labels=torch.tensor(pred_labels, dtype=torch.long))
    return s.to_dict()


def evaluate(samples, **kwargs):
    metric = DGVOCMetric(dataset_keys=KEYS, **kwargs)
    metric.dataset_meta = dict(classes=CLASSES)
    metric.process({}, samples)
    return metric.evaluate(len(samples))


def path(domain, name='a.jpg'):
    return f'/data/diverseWeather/{domain}/VOC2007/JPEGImages/{name}'


BOX = [10., 10., 49., 49.]
FAR = [60., 60., 90., 90.]


def test_perfect_predictions_give_100_everywhere():
    samples = [sample(path(d, f'{i}.jpg'), [BOX, FAR], [i % 7, 2], [BOX, FAR], [0.9, 0.8],
                      [i % 7, 2]) for i, d in enumerate(KEYS)]
    metrics = evaluate(samples)
    for key in KEYS:
        assert metrics[f'pascal_voc/{key}_mAP'] == pytest.approx(100.0)
    assert metrics['pascal_voc/mean_mAP'] == pytest.approx(100.0)


def test_hand_computed_ap_and_mean():
    samples = [
        # daytime_clear: 1 GT; a false positive ranked above the true positive:
        # precision [0, 1/2] at recall [0, 1] -> 11-point AP = 0.5
        sample(path('daytime_clear'), [BOX], [0], [FAR, BOX], [0.9, 0.8], [0, 0]),
        # Night-Sunny: same boxes, the true positive first -> AP = 1
        sample(path('Night-Sunny'), [BOX], [0], [BOX, FAR], [0.9, 0.8], [0, 0]),
        # dusk_rainy: 2 GTs of class 2, one found -> recall 1/2, precision 1
        # -> 6 of the 11 recall points (0, 0.1, ..., 0.5) -> AP = 6/11
        sample(path('dusk_rainy'), [BOX, FAR], [2, 2], [BOX], [0.7], [2]),
    ]
    metrics = evaluate(samples)
    assert metrics['pascal_voc/daytime_clear_mAP'] == pytest.approx(50.0)
    assert metrics['pascal_voc/Night-Sunny_mAP'] == pytest.approx(100.0)
    assert metrics['pascal_voc/dusk_rainy_mAP'] == pytest.approx(round(600 / 11, 2))
    assert 'pascal_voc/night_rainy_mAP' not in metrics  # no samples there
    assert metrics['pascal_voc/mean_mAP'] == pytest.approx(
        round((50.0 + 100.0 + round(600 / 11, 2)) / 3, 2))


def test_each_sample_uses_its_own_path_within_a_batch():
    # one batch holding two domains: a perfect night_rainy sample and a missed foggy one
    samples = [sample(path('night_rainy'), [BOX], [3], [BOX], [0.9], [3]),
               sample(path('daytime_foggy'), [BOX], [3], [FAR], [0.9], [3])]
    metrics = evaluate(samples)
    assert metrics['pascal_voc/night_rainy_mAP'] == pytest.approx(100.0)
    assert metrics['pascal_voc/daytime_foggy_mAP'] == pytest.approx(0.0)


def test_mean_used_keys_and_unknown_paths():
    samples = [sample(path('daytime_clear'), [BOX], [0], [BOX], [0.9], [0]),
               sample(path('Night-Sunny'), [BOX], [0], [FAR], [0.9], [0]),
               sample('/elsewhere/x.jpg', [BOX], [0], [BOX], [0.9], [0])]
    metrics = evaluate(samples, mean_used_keys=['Night-Sunny'])
    assert metrics['pascal_voc/unknown_mAP'] == pytest.approx(100.0)
    assert metrics['pascal_voc/mean_mAP'] == pytest.approx(0.0)


def test_domain_matching_is_by_folder_name():
    assert domain_of('/d/Night-Sunny/VOC2007/JPEGImages/1.jpg', KEYS) == 'Night-Sunny'
    assert domain_of('C:\\d\\dusk_rainy\\VOC2007\\1.jpg', KEYS) == 'dusk_rainy'
    assert domain_of('/d/night_rainy_extra/1.jpg', KEYS) == 'unknown'
    with pytest.raises(ValueError, match='mean_used_keys'):
        DGVOCMetric(dataset_keys=KEYS, mean_used_keys=['fog'])


# A detection whose IoU with its ground truth is above 0.5 only under VOC's +1 pixel convention
# (boxes are inclusive pixel ranges): 11 x 5.6 / (11 x 11) = 0.509, without it 10 x 4.6 / 100.
GT = [0., 0., 10., 10.]
CROSSING = [0., 0., 10., 4.6]


def test_iou_of_the_box_pair_crosses_one_half_only_with_plus_one():
    pair = (np.array([CROSSING]), np.array([GT]))
    assert bbox_overlaps(*pair, use_legacy_coordinate=True)[0, 0] > 0.5
    assert bbox_overlaps(*pair, use_legacy_coordinate=False)[0, 0] < 0.5


@pytest.mark.parametrize('eval_mode', ['11points', 'area'])
def test_matches_mmdet_eval_map_with_legacy_coordinates(eval_mode):
    # one domain, two GTs of class 'car': the crossing box ranks first, a false positive
    # second, a good box on the second GT third; and a second image with a missed 'bus'
    samples = [sample(path('dusk_rainy', '1.jpg'), [GT, FAR], [2, 2], [CROSSING, BOX, FAR],
                      [0.9, 0.8, 0.7], [2, 2, 2]),
               sample(path('dusk_rainy', '2.jpg'), [BOX], [0], [FAR], [0.6], [0])]
    metrics = evaluate(samples, eval_mode=eval_mode)
    dets = [[np.zeros((0, 5), np.float32)] * len(CLASSES) for _ in samples]
    dets[0] = list(dets[0])
    dets[0][2] = np.array([CROSSING + [0.9], BOX + [0.8], FAR + [0.7]], np.float32)
    dets[1] = list(dets[1])
    dets[1][0] = np.array([FAR + [0.6]], np.float32)
    anns = [dict(bboxes=np.array([GT, FAR], np.float32), labels=np.array([2, 2])),
            dict(bboxes=np.array([BOX], np.float32), labels=np.array([0]))]
    for ann in anns:
        ann.update(bboxes_ignore=np.zeros((0, 4), np.float32), labels_ignore=np.zeros(0, int))
    mean_ap = {legacy: eval_map(dets, anns, iou_thr=0.5, dataset=list(CLASSES),
                                eval_mode=eval_mode, logger='silent',
                                use_legacy_coordinate=legacy)[0] for legacy in (True, False)}
    assert mean_ap[True] != pytest.approx(mean_ap[False], abs=0.01)  # the convention matters
    assert metrics['pascal_voc/dusk_rainy_mAP'] == pytest.approx(
        round(100 * mean_ap[True], 2), abs=1e-9)
    assert metrics['pascal_voc/mean_mAP'] == pytest.approx(
        round(100 * mean_ap[True], 2), abs=1e-9)
