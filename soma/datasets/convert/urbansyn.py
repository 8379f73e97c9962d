"""UrbanSyn labels -> Cityscapes trainIds (value 19 becomes 255).

UrbanSyn ships ``rgb/rgb_<n>.png`` and grey-level ``ss/ss_<n>.png`` whose values already are
Cityscapes trainIds 0..18, with 19 for "unlabelled". The converted label is written to
``ss/rgb_<n>.png`` - named after its image, so an mmseg dataset with ``img_path='rgb'``,
``seg_map_path='ss'`` and ``.png`` suffixes (SPEC section 7) pairs them - and the source
``ss_<n>.png`` stays untouched. Per-file class-pixel statistics as for GTAV.
"""
import os.path as osp
from functools import partial

from .common import (IGNORE_INDEX, NUM_CLASSES, convert_label, list_files,
                     read_index_png, require_dir, run_tasks, save_class_stats)

SRC_PREFIX = 'ss_'
OUT_PREFIX = 'rgb_'
VOID_ID = 19
URBANSYN_TABLE = {**{i: i for i in range(NUM_CLASSES)}, VOID_ID: IGNORE_INDEX}
KNOWN_IDS = set(range(VOID_ID + 1)) | {IGNORE_INDEX}  # 255: a label already converted in place


def read_urbansyn_label(path):
    return read_index_png(path, modes=('L', 'P'), what='UrbanSyn label',
                          hint=' (use the grey-level ss/ labels, not ss_colour/)')


def convert_urbansyn(root, out_dir=None, gt_dir='ss', nproc=None, overwrite=False):
    """Convert every ``root/gt_dir/**/ss_*.png``; returns the statistics summary."""
    labels = require_dir(root, gt_dir, 'label')
    out_root = out_dir or root
    files = list_files(labels, '.png', prefix=SRC_PREFIX)
    tasks = []
    for f in files:
        folder, name = osp.split(f)
        rel = osp.join(gt_dir, folder, OUT_PREFIX + name[len(SRC_PREFIX):])
        tasks.append((osp.join(labels, f), osp.join(out_root, rel), rel))
    func = partial(convert_label, read=read_urbansyn_label, table=URBANSYN_TABLE,
                   known=KNOWN_IDS, overwrite=overwrite)
    results = run_tasks(func, tasks, nproc, name='UrbanSyn labels')
    return save_class_stats(out_root, results, what='UrbanSyn label')
