"""The file loop shared by the dataset converters: parallel, idempotent and atomic.

Every converter lists its source files, builds one task per file, and hands the tasks to
:func:`run_tasks` (a ``multiprocessing`` pool through mmengine's progress bar). A task whose
output exists is skipped, outputs are written to a temporary file and renamed
(:func:`soma.utils.atomic.atomic_output`), and a bad file never stops the others: once all
tasks ran, :class:`~soma.utils.cli.InputsFailed` names every bad file in one line. A bug (an
exception other than ``OSError`` / ``ValueError``) stops the run with its traceback.
"""
import json
import logging
import os
import os.path as osp
import sys
from functools import partial

import numpy as np
from mmengine.logging import print_log
from mmengine.utils import scandir, track_parallel_progress, track_progress
from PIL import Image

from soma.utils.atomic import atomic_output
from soma.utils.cli import InputsFailed

NUM_CLASSES = 19
IGNORE_INDEX = 255
CITYSCAPES_CLASSES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
                      'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car',
                      'truck', 'bus', 'train', 'motorcycle', 'bicycle')
# Cityscapes label id -> trainId (SPEC section 7); every other id is void (255)
CITYSCAPES_ID_TO_TRAINID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
STATS_FILES = ('sample_class_stats.json', 'sample_class_stats_dict.json',
               'samples_with_class.json', 'class_stats_summary.json')


def default_nproc():
    return min(8, os.cpu_count() or 1)


def require_dir(root, sub, what):
    """``root/sub`` as a path; a one-line FileNotFoundError when either is missing."""
    if not osp.isdir(root):
        raise FileNotFoundError(f'{root}: dataset folder not found')
    path = osp.join(root, sub)
    if not osp.isdir(path):
        raise FileNotFoundError(
            f"{root}: expected the {what} folder '{sub}' inside it, but {path} does not exist")
    return path


def list_files(folder, suffix, exclude=(), prefix=''):
    """Sorted paths (relative to ``folder``) of the files ending in ``suffix``, recursively."""
    files = sorted(
        f for f in scandir(folder, suffix=suffix, recursive=True)
        if not f.endswith(tuple(exclude)) and osp.basename(f).startswith(prefix))
    if not files:
        raise FileNotFoundError(f'{folder}: no {prefix}*{suffix} files found')
    return files


def read_index_png(path, modes=('P', 'L'), what='label', hint=''):
    """The pixel indices of a single-channel PNG ('P': palette index, not the colour).

    A wrong image mode (e.g. an RGB colour rendering) raises ValueError naming the file,
    the mode and ``hint``.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path}: file not found')
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            array = np.asarray(img)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ... for bad files
        raise ValueError(f'{path}: cannot read the {what} image ({e})') from None
    if mode not in modes:
        raise ValueError(f"{path}: expected a {' or '.join(repr(m) for m in modes)} mode "
                         f"{what} PNG holding class indices, got mode '{mode}'{hint}")
    return array


def save_png(array, path):
    """Write a uint8 label map atomically (temporary file + rename)."""
    with atomic_output(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(tmp, format='PNG')


def remap(label, table, known):
    """Map ids with ``table`` (others -> 255); count the values that are not in ``known``.

    Returns ``(train_ids uint8, {unexpected value: pixel count})``.
    """
    label = np.asarray(label)
    if label.dtype.kind not in 'ui' or (label.dtype.kind == 'i' and label.min() < 0):
        raise ValueError(f'label values must be non-negative integers, got {label.dtype}')
    counts = np.bincount(label.ravel())
    lut = np.full(len(counts), IGNORE_INDEX, dtype=np.uint8)
    for k, v in table.items():
        if k < len(lut):
            lut[k] = v
    known = set(known)
    unexpected = {int(v): int(counts[v]) for v in np.flatnonzero(counts) if int(v) not in known}
    return lut[label], unexpected


def class_counts(train_ids):
    """``({trainId: pixels} for the classes present, void pixel count)``."""
    counts = np.bincount(train_ids.ravel(), minlength=256)
    return {c: int(counts[c]) for c in range(NUM_CLASSES) if counts[c]}, int(counts[IGNORE_INDEX])


def convert_label(task, read, table, known, stats=True, overwrite=False):
    """One file: read ``src``, remap, write ``dst`` unless it exists (task: src, dst, rel)."""
    src, dst, rel = task
    done = osp.exists(dst) and not overwrite
    if done and not stats:
        return dict(file=rel, skipped=True)
    train_ids, unexpected = remap(read(src), table, known)
    if not done:
        save_png(train_ids, dst)
    classes, void = class_counts(train_ids)
    return dict(file=rel, skipped=done, classes=classes, void=void, unexpected=unexpected)


def _guarded(func, task):
    """Run ``func(task)``; ``(True, result)``, or for a bad file ``(False, (file, message
    naming it))``."""
    try:
        return True, func(task)
    except (OSError, ValueError) as e:  # a bad file: named by run_tasks once all tasks ran
        msg = ' '.join(str(e).split()) or type(e).__name__
        src = str(task[0] if isinstance(task, (tuple, list)) else task)
        if src not in msg:
            msg = f'{src}: {type(e).__name__}: {msg}'
        return False, (src, msg)


def run_tasks(func, tasks, nproc=None, name='files'):
    """Apply ``func`` to every task (``nproc`` processes, None: :func:`default_nproc`) with
    a progress bar.

    Raises :class:`~soma.utils.cli.InputsFailed` naming every bad file after all tasks ran
    (the good outputs stay, so a re-run after fixing the bad inputs only redoes what is
    missing).
    """
    nproc = default_nproc() if nproc is None else nproc
    if isinstance(nproc, bool) or int(nproc) != nproc or nproc < 1:
        raise ValueError(f'nproc (--nproc) must be an integer >= 1, got {nproc}')
    guarded = partial(_guarded, func)
    print_log(f'processing {len(tasks)} {name} with {nproc} process(es)', logger='current')
    if nproc > 1 and len(tasks) > 1:
        outcomes = track_parallel_progress(guarded, tasks, min(int(nproc), len(tasks)),
                                           file=sys.stdout)
    else:
        outcomes = track_progress(guarded, tasks, file=sys.stdout)
    results = [res for ok, res in outcomes if ok]
    failures = [res for ok, res in outcomes if not ok]
    if failures:
        raise InputsFailed(failures, done=results, what=name)
    skipped = sum(bool(r.get('skipped')) for r in results if isinstance(r, dict))
    print_log(f'{len(results) - skipped} {name} written, {skipped} already done (skipped)',
              logger='current')
    return results


def warn_unexpected(results, what):
    """Log one warning for all label values outside the map (they were written as 255)."""
    bad = [r for r in results if r.get('unexpected')]
    if not bad:
        return {}
    values = {}
    for r in bad:
        for v, n in r['unexpected'].items():
            values[v] = values.get(v, 0) + n
    print_log(
        f'{len(bad)} {what} file(s) hold values outside the id map: '
        f'{dict(sorted(values.items()))} (value: pixels); they were written as {IGNORE_INDEX}. '
        f'First file: {bad[0]["file"]}', logger='current', level=logging.WARNING)
    return values


def write_text(text, path):
    """Write ``text`` atomically, only when the file's content changes. True if written."""
    if osp.isfile(path):
        with open(path) as f:
            if f.read() == text:
                return False
    with atomic_output(path) as tmp:
        with open(tmp, 'w') as f:
            f.write(text)
    return True


def write_json(obj, path):
    return write_text(json.dumps(obj, indent=2), path)


def save_class_stats(out_dir, results, what='label'):
    """Per-file class-pixel statistics in the release's three files plus a summary.

    ``sample_class_stats.json``: ``[{"file": f, "<trainId>": pixels, ...}, ...]``;
    ``sample_class_stats_dict.json``: ``{f: {"<trainId>": pixels}}``;
    ``samples_with_class.json``: ``{"<trainId>": [[f, pixels], ...]}``;
    ``class_stats_summary.json``: totals per class, void pixels and unexpected values.
    File names are relative to ``out_dir``. Returns the summary dict.
    """
    results = sorted(results, key=lambda r: r['file'])
    unexpected = warn_unexpected(results, what)
    per_file = [dict(file=r['file'], **{str(c): n for c, n in sorted(r['classes'].items())})
                for r in results]
    per_file_dict = {r['file']: {str(c): n for c, n in sorted(r['classes'].items())}
                     for r in results}
    with_class = {}
    for r in results:
        for c, n in sorted(r['classes'].items()):
            with_class.setdefault(c, []).append([r['file'], n])
    summary = dict(
        num_files=len(results),
        classes=list(CITYSCAPES_CLASSES),
        class_pixels={str(c): sum(r['classes'].get(c, 0) for r in results)
                      for c in range(NUM_CLASSES)},
        files_with_class={str(c): len(with_class.get(c, [])) for c in range(NUM_CLASSES)},
        ignore_pixels=sum(r['void'] for r in results),
        unexpected_values={str(v): n for v, n in sorted(unexpected.items())},
        files_with_unexpected_values=[r['file'] for r in results if r.get('unexpected')],
    )
    os.makedirs(out_dir, exist_ok=True)
    write_json(per_file, osp.join(out_dir, STATS_FILES[0]))
    write_json(per_file_dict, osp.join(out_dir, STATS_FILES[1]))
    write_json({str(c): v for c, v in sorted(with_class.items())},
               osp.join(out_dir, STATS_FILES[2]))
    write_json(summary, osp.join(out_dir, STATS_FILES[3]))
    converted = sum(not r['skipped'] for r in results)
    return dict(summary, converted=converted, skipped=len(results) - converted, out_dir=out_dir)
