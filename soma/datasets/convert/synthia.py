"""SYNTHIA (RAND-CITYSCAPES) labels -> Cityscapes trainIds.

A SYNTHIA label is a 16-bit, 3-channel PNG: the class id in the file's first (red) channel,
the instance id in the second (SYNTHIA README: "The first channel contains the class of that
pixel"). OpenCV returns channels in BGR order, so the release's
``cv2.imread(path, cv2.IMREAD_UNCHANGED)[:, :, -1]`` - the "last channel" of SPEC section 7 -
is that red/class channel. Here it is read as channel index 2 of the BGR(A) array, which is
the same channel for the 3-channel files SYNTHIA ships (and stays the red channel, not alpha,
should a file carry four channels). Output: ``GT/LABELS/<n>_labelTrainIds.png`` plus the
per-file class-pixel statistics.
"""
import os.path as osp
from functools import partial

import cv2

from .common import (convert_label, list_files, require_dir, run_tasks,
                     save_class_stats)

OUT_SUFFIX = '_labelTrainIds.png'
# SYNTHIA class id -> Cityscapes trainId (SPEC section 7, SYNTHIA_RAND_CITYSCAPES README)
SYNTHIA_ID_TO_TRAINID = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12,
    8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}
KNOWN_IDS = range(23)  # SYNTHIA ids 0..22 (0 void, 13 parking slot, 14 road-work, 22 lane marking)
CLASS_CHANNEL = 2  # index in OpenCV's BGR(A) order = the file's red (first) channel


def read_synthia_label(path):
    """The class-id channel of a SYNTHIA label (uint16 array, H x W)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path}: file not found')
    label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if label is None:
        raise ValueError(f'{path}: cannot read the SYNTHIA label image')
    if label.ndim != 3 or label.shape[2] not in (3, 4):
        raise ValueError(f'{path}: expected a 3-channel (16-bit) SYNTHIA label with the class '
                         f'id in its first channel, got shape {tuple(label.shape)}')
    return label[:, :, CLASS_CHANNEL]


def convert_synthia(root, out_dir=None, gt_dir='GT/LABELS', nproc=None, overwrite=False):
    """Convert every ``root/gt_dir/**/*.png`` label; returns the statistics summary."""
    labels = require_dir(root, gt_dir, 'label')
    out_root = out_dir or root
    files = list_files(labels, '.png', exclude=(OUT_SUFFIX, ))
    tasks = []
    for f in files:
        rel = osp.join(gt_dir, f[:-len('.png')] + OUT_SUFFIX)
        tasks.append((osp.join(labels, f), osp.join(out_root, rel), rel))
    func = partial(convert_label, read=read_synthia_label, table=SYNTHIA_ID_TO_TRAINID,
                   known=KNOWN_IDS, overwrite=overwrite)
    results = run_tasks(func, tasks, nproc, name='SYNTHIA labels')
    return save_class_stats(out_root, results, what='SYNTHIA label')
