"""mIoU per target domain of a concatenated test set, and their mean."""
import logging
from collections import OrderedDict

import numpy as np
from mmengine.logging import MMLogger, print_log
from mmseg.evaluation.metrics import IoUMetric
from prettytable import PrettyTable

from soma.registry import SEG_METRICS

__all__ = ['DGIoUMetric']


@SEG_METRICS.register_module()
class DGIoUMetric(IoUMetric):
    """``IoUMetric`` computed separately for each target domain of a ``ConcatDataset``.

    Each sample goes to the first of ``dataset_keys`` found in its own ``img_path`` (then
    ``seg_map_path``); a sample matching no key is an error. Returns, for each key,
    ``<name>_<metric>`` (``<name>`` is the key without surrounding ``/``: ``'night/'`` gives
    ``night_mIoU``) in percent rounded to 2 decimals as mmseg's ``IoUMetric`` reports it, and
    ``mean_<metric>``, the mean of those over ``mean_used_keys`` (default: all keys), *not*
    rounded (as in the release; ``CheckpointHook(save_best='mean_mIoU')`` compares it), for
    the summary metrics of ``iou_metrics`` (``aAcc``, ``mIoU``, ``mAcc``, ...). One table is
    logged: per-class IoU of every target, then the mIoU row (rounded for display only).

    Args:
        dataset_keys: substrings that identify the domains in the image paths.
        mean_used_keys: the keys averaged into ``mean_*`` (a subset of ``dataset_keys``).
        **kwargs: ``IoUMetric`` arguments (``ignore_index``, ``iou_metrics``, ...).
    """

    def __init__(self, dataset_keys, mean_used_keys=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(dataset_keys, str) or not dataset_keys:
            raise ValueError(f'DGIoUMetric: dataset_keys must be a non-empty list of strings, '
                             f'got {dataset_keys!r}')
        self.dataset_keys = list(dataset_keys)
        self.mean_used_keys = list(mean_used_keys) if mean_used_keys else list(self.dataset_keys)
        unknown = [k for k in self.mean_used_keys if k not in self.dataset_keys]
        if unknown:
            raise ValueError(f'DGIoUMetric: mean_used_keys {unknown} are not in dataset_keys '
                             f'{self.dataset_keys}')
        self.format_only = kwargs.get('format_only', False)

    def key_of(self, data_sample):
        """The dataset key of one sample (first key found in its own path)."""
        path = data_sample.get('img_path') or data_sample.get('seg_map_path') or ''
        for key in self.dataset_keys:
            if key in path:
                return key
        raise ValueError(f'DGIoUMetric: no dataset key of {self.dataset_keys} in the path '
                         f'{path!r}')

    def process(self, data_batch, data_samples):
        start = len(self.results)
        super().process(data_batch, data_samples)
        if self.format_only:
            return
        for i, data_sample in enumerate(data_samples):
            self.results[start + i] = (*self.results[start + i], self.key_of(data_sample))

    @staticmethod
    def _name(key):
        return key.strip('/').strip() or key

    def compute_metrics(self, results):
        logger = MMLogger.get_current_instance()
        if self.format_only:
            logger.info(f'results are saved to {self.output_dir}')
            return OrderedDict()
        by_key = OrderedDict((k, []) for k in self.dataset_keys)
        for result in results:
            by_key[result[4]].append(result[:4])
        metrics, per_class, summary_names = OrderedDict(), OrderedDict(), []
        for key, key_results in by_key.items():
            if not key_results:
                print_log(f'DGIoUMetric: no sample of {key!r} was evaluated', logger,
                          level=logging.WARNING)
                continue
            areas = [sum(parts) for parts in zip(*key_results)]
            ret = self.total_area_to_metrics(*areas, self.metrics, self.nan_to_num, self.beta)
            for name, value in ret.items():
                summary = float(np.round(np.nanmean(value) * 100, 2))
                metric_name = name if name == 'aAcc' else 'm' + name
                if metric_name not in summary_names:
                    summary_names.append(metric_name)
                metrics[f'{self._name(key)}_{metric_name}'] = summary
            per_class[key] = ret.get('IoU')
        used = [k for k in self.mean_used_keys if k in per_class]
        for metric_name in summary_names:
            values = [metrics[f'{self._name(k)}_{metric_name}'] for k in used]
            if values:  # not rounded (as the release): save_best compares it
                metrics[f'mean_{metric_name}'] = float(sum(values) / len(values))
        self._log_table(per_class, metrics, used, logger)
        return dict(metrics)

    def _log_table(self, per_class, metrics, used, logger):
        keys = [k for k, v in per_class.items() if v is not None]
        if not keys:
            return
        table = PrettyTable()
        table.add_column('Class', list(self.dataset_meta['classes']) + ['mIoU'])
        for key in keys:
            ious = [f'{v * 100:.2f}' for v in per_class[key]]
            table.add_column(self._name(key), ious + [f"{metrics[f'{self._name(key)}_mIoU']:.2f}"])
        print_log('per class IoU of each target domain:\n' + table.get_string(), logger)
        if 'mean_mIoU' in metrics:
            print_log(f"mean mIoU over {[self._name(k) for k in used]}: "
                      f"{metrics['mean_mIoU']:.2f}", logger)
