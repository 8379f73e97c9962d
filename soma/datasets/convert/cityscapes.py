"""Cityscapes polygons -> trainId label images, with the official ``cityscapesscripts``.

Each ``gtFine/<split>/<city>/<n>_gtFine_polygons.json`` gives
``<n>_gtFine_labelTrainIds.png`` next to it (or the same relative path under ``out_dir``),
drawn by ``cityscapesscripts.preparation.json2labelImg.createLabelImage(annotation,
'trainIds')``. The lists ``train.txt``/``val.txt``/``test.txt`` (``<city>/<n>`` per line,
the ``ann_file`` format of mmseg) are written to the output root as in the release.
"""
import os
import os.path as osp
from functools import partial

from mmengine.utils import scandir

from soma.utils.atomic import atomic_output

from .common import list_files, require_dir, run_tasks, write_text

IN_SUFFIX = '_polygons.json'
OUT_SUFFIX = '_labelTrainIds.png'
SPLITS = ('train', 'val', 'test')


def _cityscapesscripts():
    try:
        from cityscapesscripts.helpers.annotation import Annotation  # optional dependency
        from cityscapesscripts.helpers.labels import name2label
        from cityscapesscripts.preparation.json2labelImg import createLabelImage
    except ImportError as e:
        raise ImportError('the Cityscapes converter needs the official cityscapesscripts '
                          f'package (pip install cityscapesscripts): {e}') from None
    return Annotation, name2label, createLabelImage


def polygons_to_train_ids(task, overwrite=False):
    """One file (task: src json, dst png, rel): draw the trainId image, write it atomically."""
    src, dst, rel = task
    if osp.exists(dst) and not overwrite:
        return dict(file=rel, skipped=True)
    Annotation, name2label, createLabelImage = _cityscapesscripts()
    annotation = Annotation()
    try:
        annotation.fromJsonFile(src)
    except Exception as e:
        raise ValueError(f'{src}: cannot read the Cityscapes polygon json ({e})') from None
    for obj in annotation.objects:
        label = obj.label
        if label not in name2label and label.endswith('group'):
            label = label[:-len('group')]
        if not obj.deleted and label not in name2label:  # createLabelImage would sys.exit()
            raise ValueError(f"{src}: unknown Cityscapes label '{obj.label}'")
    image = createLabelImage(annotation, 'trainIds')
    with atomic_output(dst) as tmp:
        image.save(tmp, format='PNG')
    return dict(file=rel, skipped=False)


def write_split_lists(gt_root, out_root, splits=SPLITS):
    """``<split>.txt`` with ``<city>/<name>`` lines for every split folder present."""
    written = {}
    for split in splits:
        folder = osp.join(gt_root, split)
        if not osp.isdir(folder):
            continue
        names = [f[:-len(IN_SUFFIX)] for f in sorted(scandir(folder, IN_SUFFIX, recursive=True))]
        names = [n[:-len('_gtFine')] if n.endswith('_gtFine') else n for n in names]
        if not names:
            continue
        write_text(''.join(n + '\n' for n in names), osp.join(out_root, f'{split}.txt'))
        written[split] = len(names)
    return written


def convert_cityscapes(root, out_dir=None, gt_dir='gtFine', nproc=None, overwrite=False):
    """Convert every ``root/gt_dir/**/*_polygons.json``; returns a small summary dict."""
    _cityscapesscripts()  # fail early, before any work, when the package is missing
    gt_root = require_dir(root, gt_dir, 'annotation')
    out_root = out_dir or root
    tasks = []
    for f in list_files(gt_root, IN_SUFFIX):
        rel = osp.join(gt_dir, f[:-len(IN_SUFFIX)] + OUT_SUFFIX)
        tasks.append((osp.join(gt_root, f), osp.join(out_root, rel), rel))
    results = run_tasks(partial(polygons_to_train_ids, overwrite=overwrite), tasks,
                        nproc, name='Cityscapes polygon files')
    os.makedirs(out_root, exist_ok=True)
    splits = write_split_lists(gt_root, out_root)
    converted = sum(not r['skipped'] for r in results)
    return dict(num_files=len(results), converted=converted, skipped=len(results) - converted,
                splits=splits, out_dir=out_root)

