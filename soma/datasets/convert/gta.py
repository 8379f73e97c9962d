"""GTAV labels -> Cityscapes trainIds.

GTAV labels are palette-mode ('P') PNGs whose pixel *index* is the Cityscapes label id (the
palette only colours it), so the index is read, never the RGB colour. Each ``labels/<n>.png``
gives ``labels/<n>_labelTrainIds.png`` (or the same relative path under ``out_dir``) and the
per-file class-pixel statistics (:func:`common.save_class_stats`).
"""
import os.path as osp
from functools import partial

from .common import (CITYSCAPES_ID_TO_TRAINID, convert_label, list_files,
                     read_index_png, require_dir, run_tasks, save_class_stats)

OUT_SUFFIX = '_labelTrainIds.png'
KNOWN_IDS = range(34)  # Cityscapes label ids 0..33; ids outside the map but in here are void


def read_gta_label(path):
    """Palette indices of a GTAV label; ValueError naming the file for an RGB label."""
    return read_index_png(
        path, modes=('P', 'L'), what='GTAV label',
        hint=' (GTAV labels are palette PNGs whose index is the Cityscapes label id; '
        'a colour image cannot be converted, use the original labels)')


def convert_gta(root, out_dir=None, gt_dir='labels', nproc=None, overwrite=False):
    """Convert every ``root/gt_dir/**/*.png`` label; returns the statistics summary."""
    labels = require_dir(root, gt_dir, 'label')
    out_root = out_dir or root
    files = list_files(labels, '.png', exclude=(OUT_SUFFIX, ))
    tasks = []
    for f in files:
        rel = osp.join(gt_dir, f[:-len('.png')] + OUT_SUFFIX)
        tasks.append((osp.join(labels, f), osp.join(out_root, rel), rel))
    func = partial(convert_label, read=read_gta_label, table=CITYSCAPES_ID_TO_TRAINID,
                   known=KNOWN_IDS, overwrite=overwrite)
    results = run_tasks(func, tasks, nproc, name='GTAV labels')
    return save_class_stats(out_root, results, what='GTAV label')
