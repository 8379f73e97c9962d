"""VOC mAP per target domain, plus the mean over domains (Diverse Weather benchmark).

Each sample is assigned to the first of ``dataset_keys`` that is one of the folder names
in *its own* image path (the original release looked at the first sample of each batch
only). Per domain, mmdet's ``eval_map`` computes the VOC AP (``'11points'`` by default,
legacy +1 pixel box convention, like mmdet's ``VOCMetric``). Results are in percent:
``<key>_mAP`` (and ``<key>_AP50``... per IoU threshold), ``mean_mAP`` over
``mean_used_keys`` (default: all keys). One table (per-class AP of every domain) is logged.
Samples whose path holds no key go to ``unknown`` (reported, not in the mean).
"""
import re
from collections import OrderedDict, defaultdict

import numpy as np
from mmdet.evaluation.functional import eval_map
from mmdet.evaluation.metrics import VOCMetric
from mmengine.logging import MMLogger, print_log
from terminaltables import AsciiTable

from soma.registry import DET_METRICS

DEFAULT_KEYS = ('daytime_clear', 'Night-Sunny', 'dusk_rainy', 'night_rainy', 'daytime_foggy')
UNKNOWN_KEY = 'unknown'


def domain_of(img_path, dataset_keys):
    """The first key of ``dataset_keys`` that is a folder name in ``img_path``."""
    folders = set(re.split(r'[\\/]+', str(img_path))[:-1])
    for key in dataset_keys:
        if key in folders:
            return key
    return UNKNOWN_KEY


@DET_METRICS.register_module()
class DGVOCMetric(VOCMetric):
    """VOC mAP per domain and their mean (see module docstring).

    Args:
        dataset_keys (list[str]): domain folder names, matched in each image path.
        mean_used_keys (list[str], optional): keys averaged into ``mean_*``; default all.
        **kwargs: mmdet ``VOCMetric`` arguments (``iou_thrs``, ``eval_mode``, ...);
            ``metric`` must be ``'mAP'``.
    """

    default_prefix = 'pascal_voc'

    def __init__(self, dataset_keys=DEFAULT_KEYS, mean_used_keys=None, **kwargs):
        super().__init__(**kwargs)
        if self.metric != 'mAP':
            raise ValueError(f"DGVOCMetric computes metric='mAP' only, got {self.metric!r}")
        if not dataset_keys:
            raise ValueError('DGVOCMetric needs at least one dataset key')
        self.dataset_keys = list(dataset_keys)
        self.mean_used_keys = list(mean_used_keys) if mean_used_keys else list(dataset_keys)
        unknown = set(self.mean_used_keys) - set(self.dataset_keys)
        if unknown:
            raise ValueError(f'mean_used_keys {sorted(unknown)} are not in dataset_keys')

    def process(self, data_batch, data_samples):
        for data_sample in data_samples:
            gt, ignored = data_sample['gt_instances'], data_sample['ignored_instances']
            ann = dict(
                labels=gt['labels'].cpu().numpy(), bboxes=gt['bboxes'].cpu().numpy(),
                bboxes_ignore=ignored['bboxes'].cpu().numpy(),
                labels_ignore=ignored['labels'].cpu().numpy())
            pred = data_sample['pred_instances']
            boxes = pred['bboxes'].cpu().numpy()
            scores = pred['scores'].cpu().numpy()
            labels = pred['labels'].cpu().numpy()
            dets = [np.hstack([boxes[labels == c], scores[labels == c].reshape(-1, 1)])
                    for c in range(len(self.dataset_meta['classes']))]
            key = domain_of(data_sample['img_path'], self.dataset_keys)
            self.results.append((key, ann, dets))

    def compute_metrics(self, results):
        logger = MMLogger.get_current_instance()
        classes = list(self.dataset_meta['classes'])
        by_key = defaultdict(list)
        for key, ann, dets in results:
            by_key[key].append((ann, dets))
        if UNKNOWN_KEY in by_key:
            print_log(f'DGVOCMetric: {len(by_key[UNKNOWN_KEY])} samples match none of '
                      f'{self.dataset_keys} in their path; reported as "{UNKNOWN_KEY}"',
                      logger=logger, level=30)

        metrics, rows = OrderedDict(), []
        for key in self.dataset_keys + [UNKNOWN_KEY]:
            if key not in by_key:
                continue
            anns, dets = [r[0] for r in by_key[key]], [r[1] for r in by_key[key]]
            per_thr, class_aps = [], []
            for thr in self.iou_thrs:
                mean_ap, per_class = eval_map(
                    dets, anns, scale_ranges=self.scale_ranges, iou_thr=thr, dataset=classes,
                    logger='silent', eval_mode=self.eval_mode, use_legacy_coordinate=True)
                per_thr.append(100.0 * float(mean_ap))
                class_aps.append([100.0 * float(np.mean(r['ap'])) if r['num_gts'] > 0
                                  else float('nan') for r in per_class])
                metrics[f'{key}_AP{int(round(thr * 100)):02d}'] = round(per_thr[-1], 2)
            metrics[f'{key}_mAP'] = round(sum(per_thr) / len(per_thr), 2)
            rows.append([key, str(len(anns))] + _fmt(np.mean(class_aps, axis=0))
                        + [f'{metrics[f"{key}_mAP"]:.2f}'])
        for name in [f'AP{int(round(t * 100)):02d}' for t in self.iou_thrs] + ['mAP']:
            values = [metrics[f'{k}_{name}'] for k in self.mean_used_keys
                      if f'{k}_{name}' in metrics]
            if values:
                metrics[f'mean_{name}'] = round(sum(values) / len(values), 2)
        if 'mean_mAP' in metrics:
            rows.append(['mean', ''] + [''] * len(classes) + [f'{metrics["mean_mAP"]:.2f}'])
        table = AsciiTable([['domain', 'images'] + classes + ['mAP']] + rows)
        table.inner_footing_row_border = 'mean_mAP' in metrics
        print_log(f'VOC AP (%, {self.eval_mode}, IoU {self.iou_thrs}) per domain:\n' + table.table,
                  logger=logger)
        if 'mean_mAP' in metrics:
            metrics.move_to_end('mean_mAP', last=False)
        return dict(metrics)


def _fmt(values):
    return ['-' if np.isnan(v) else f'{v:.1f}' for v in values]


__all__ = ['DGVOCMetric', 'domain_of']
