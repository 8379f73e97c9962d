"""Predictions written as files: benchmark-server submissions (Cityscapes label ids + zip)
and train-id maps, by an mmengine metric that computes nothing (``tools/test.py --submit``
/ ``--out``).

The Cityscapes and ACDC test servers take one PNG per test image holding Cityscapes *label
ids* (``labelIds``: 7 road, 8 sidewalk, ..., 33 bicycle), in one zip. They find the
prediction of an image by its name (Cityscapes: ``<city>_<seq>_<frame>*.png`` anywhere in the
zip), so each file is named after its image: the image name minus ``_leftImg8bit.png`` /
``_rgb_anon.png`` (other names: minus the extension), plus :data:`LABEL_ID_SUFFIX`.
"""
import logging
import os
import os.path as osp
import zipfile
from collections import Counter
from typing import Optional, Sequence

import numpy as np
from mmengine.dist import is_main_process
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger, print_log

from soma.deploy.runtime import write_png  # numpy/opencv only: one PNG writer
from soma.registry import SEG_METRICS
from soma.utils.atomic import atomic_output

__all__ = ['CITYSCAPES_CLASSES', 'TRAIN_ID_TO_LABEL_ID', 'IMAGE_SUFFIXES', 'LABEL_ID_SUFFIX',
           'submission_name', 'train_ids_to_label_ids', 'SegPredictionWriter']

# the 19 evaluated Cityscapes classes in train-id order, and the label id of each
CITYSCAPES_CLASSES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
                      'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car',
                      'truck', 'bus', 'train', 'motorcycle', 'bicycle')
TRAIN_ID_TO_LABEL_ID = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32,
                        33)
IMAGE_SUFFIXES = ('_leftImg8bit.png', '_rgb_anon.png')  # Cityscapes, ACDC
LABEL_ID_SUFFIX = '_labelIds.png'


def submission_name(img_path: str) -> str:
    """The submission file name of an image: its name minus the dataset's image suffix,
    plus :data:`LABEL_ID_SUFFIX` (``berlin_000000_000019_leftImg8bit.png`` ->
    ``berlin_000000_000019_labelIds.png``)."""
    name = osp.basename(img_path)
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)] + LABEL_ID_SUFFIX
    return osp.splitext(name)[0] + LABEL_ID_SUFFIX


def train_ids_to_label_ids(train_ids: np.ndarray, where: str = 'prediction') -> np.ndarray:
    """Cityscapes train ids (0..18) -> label ids (uint8); an error naming ``where`` for any
    other value."""
    train_ids = np.asarray(train_ids)
    bad = (train_ids < 0) | (train_ids >= len(TRAIN_ID_TO_LABEL_ID))
    if bad.any():
        raise ValueError(f'{where}: train id {int(train_ids[bad][0])} is not one of the 19 '
                         f'Cityscapes classes (0..18)')
    return np.asarray(TRAIN_ID_TO_LABEL_ID, dtype=np.uint8)[train_ids]


@SEG_METRICS.register_module()
class SegPredictionWriter(BaseMetric):
    """Write every test prediction as PNG files at the image's original size; no metric.

    Args:
        train_id_dir: folder for ``<image stem>.png`` holding the predicted train ids (the
            names mmseg's ``IoUMetric(output_dir=...)`` uses; ``tools/test.py --out``).
        label_id_dir: folder for :func:`submission_name` PNGs holding Cityscapes label ids,
            zipped at the end into ``<label_id_dir>.zip`` (beside the folder, so that the folder
            holds the predictions only; ``tools/test.py --submit``). Needs the 19 Cityscapes
            classes.

    Every file is written to a temporary name and renamed when complete; the zip of an
    earlier run is removed first, so a zip that exists is complete and of this run. Two test
    images with the same file name are refused (their predictions would overwrite each other).
    """

    default_prefix = 'predictions'

    def __init__(self, train_id_dir: Optional[str] = None, label_id_dir: Optional[str] = None,
                 **kwargs):
        super().__init__(**kwargs)
        if not train_id_dir and not label_id_dir:
            raise ValueError('SegPredictionWriter writes nothing: give tools/test.py --submit '
                             'DIR (label ids + zip, for a test server) and/or --out DIR '
                             '(train ids)')
        self.train_id_dir = os.fspath(train_id_dir) if train_id_dir else None
        self.label_id_dir = os.fspath(label_id_dir).rstrip('/\\') if label_id_dir else None
        if self.label_id_dir and is_main_process() and osp.isfile(self.zip_path):
            os.remove(self.zip_path)

    @property
    def zip_path(self) -> Optional[str]:
        """The zip of the label-id PNGs, ``<label_id_dir>.zip``."""
        return self.label_id_dir + '.zip' if self.label_id_dir else None

    def _check_classes(self):
        classes = tuple((self.dataset_meta or {}).get('classes') or ())
        if classes != CITYSCAPES_CLASSES:
            raise ValueError(f'--submit writes Cityscapes label ids: the test set must have the '
                             f'19 Cityscapes classes, it has {len(classes)} '
                             f'({", ".join(classes[:3])}, ...)')

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Write the PNGs of one batch; keep their names."""
        if self.label_id_dir:
            self._check_classes()
        for sample in data_samples:
            img_path = sample['img_path']
            pred = sample['pred_sem_seg']['data'][0].cpu().numpy()
            names = {}
            if self.train_id_dir:
                train_ids = pred + 1 if sample.get('reduce_zero_label', False) else pred
                names['train'] = osp.splitext(osp.basename(img_path))[0] + '.png'
                os.makedirs(self.train_id_dir, exist_ok=True)
                write_png(osp.join(self.train_id_dir, names['train']),
                          np.ascontiguousarray(train_ids, dtype=np.uint8))
            if self.label_id_dir:
                names['label'] = submission_name(img_path)
                os.makedirs(self.label_id_dir, exist_ok=True)
                write_png(osp.join(self.label_id_dir, names['label']),
                          train_ids_to_label_ids(pred, img_path))
            self.results.append((img_path, names))

    def compute_metrics(self, results: list) -> dict:
        """Refuse clashing names, zip the label-id PNGs; return no metric."""
        logger = MMLogger.get_current_instance()
        for kind in ('train', 'label'):
            counts = Counter(names[kind] for _, names in results if kind in names)
            clashes = [name for name, n in counts.items() if n > 1]
            if clashes:
                paths = [p for p, names in results if names.get(kind) == clashes[0]]
                raise ValueError(f'test images {paths[0]} and {paths[1]} both give the file '
                                 f'{clashes[0]}: their predictions would overwrite each other')
        if self.train_id_dir:
            print_log(f'{len(results)} train-id PNGs in {self.train_id_dir}', logger)
        if self.label_id_dir:
            names = sorted(names['label'] for _, names in results)
            self._zip(names)
            others = sorted(set(os.listdir(self.label_id_dir)) - set(names))
            print_log(f'{len(names)} label-id PNGs in {self.label_id_dir}, zipped for the '
                      f'test server: {self.zip_path}', logger)
            if others:
                print_log(f'{self.label_id_dir} also holds {len(others)} files this run did not '
                          f'write (e.g. {others[0]}); they are not in the zip', logger,
                          level=logging.WARNING)
        return {}

    def _zip(self, names):
        with atomic_output(self.zip_path) as tmp:
            with zipfile.ZipFile(tmp, 'w', zipfile.ZIP_DEFLATED) as archive:
                for name in names:
                    archive.write(osp.join(self.label_id_dir, name), arcname=name)
