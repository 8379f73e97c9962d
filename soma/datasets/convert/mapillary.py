"""Mapillary Vistas -> Cityscapes trainIds, and the halved validation set.

Names are the ``readable`` entries of ``config_v1.2.json``, lower-cased with spaces and
hyphens removed (so "Traffic Sign (Front)" is ``trafficsign(front)``). The rules of SPEC
section 7, tried in this order (the first match wins):

1. the name is a Cityscapes class name (``trafficlight``, ``sky``, ``bicycle``, ...) -> it;
2. contains ``trafficsign``, ``front`` or ``back`` -> traffic sign;
3. contains ``onrail`` -> train;
4. contains ``cyclist`` or ``rider`` -> rider;
5. contains ``pole`` or ``streetlight`` -> pole;
6. contains ``curb`` or ``pedestrianarea`` -> sidewalk;
7. contains ``crosswalkplain``, ``parking``, ``bikelane``, ``servicelane`` or
   ``lanemarking`` -> road;
8. anything else -> 255.

Labels (palette PNGs whose index is the position in ``labels``) of
``<split>/<version>/labels`` are written to ``cityscapes_trainIdLabel/{train,val}/label``.
:func:`resize_mapillary_half` halves validation images (bicubic) and labels (nearest).
"""
import json
import os.path as osp
from functools import partial

from PIL import Image

from soma.utils.atomic import atomic_output

from .common import (CITYSCAPES_CLASSES, IGNORE_INDEX, convert_label,
                     list_files, read_index_png, require_dir, run_tasks, warn_unexpected)

SPLITS = (('training', 'train'), ('validation', 'val'))
OUT_DIR = 'cityscapes_trainIdLabel'
_CITYSCAPES = {name.replace(' ', ''): i for i, name in enumerate(CITYSCAPES_CLASSES)}
_RULES = (  # (substrings, Cityscapes class), tried in order after the exact-name match
    (('trafficsign', 'front', 'back'), 'trafficsign'),
    (('onrail', ), 'train'),
    (('cyclist', 'rider'), 'rider'),
    (('pole', 'streetlight'), 'pole'),
    (('curb', 'pedestrianarea'), 'sidewalk'),
    (('crosswalkplain', 'parking', 'bikelane', 'servicelane', 'lanemarking'), 'road'),
)


def normalize_name(readable):
    return readable.lower().replace(' ', '').replace('-', '')


def mapillary_name_to_train_id(readable):
    """Cityscapes trainId (or 255) of one Mapillary ``readable`` class name."""
    name = normalize_name(readable)
    if name in _CITYSCAPES:
        return _CITYSCAPES[name]
    for keys, target in _RULES:
        if any(k in name for k in keys):
            return _CITYSCAPES[target]
    return IGNORE_INDEX


def load_mapillary_table(config_path):
    """``[(readable name, trainId), ...]`` in label-index order from ``config_<v>.json``."""
    if not osp.isfile(config_path):
        raise FileNotFoundError(f'{config_path}: Mapillary config file not found')
    try:
        with open(config_path) as f:
            labels = json.load(f)['labels']
        names = [label['readable'] for label in labels]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{config_path}: expected json with a 'labels' list of objects with "
                         f"a 'readable' name ({type(e).__name__}: {e})") from None
    return [(name, mapillary_name_to_train_id(name)) for name in names]


def read_mapillary_label(path):
    return read_index_png(path, modes=('P', 'L'), what='Mapillary label',
                          hint=' (use <split>/<version>/labels, whose index is the class)')


def convert_mapillary(root, out_dir=None, version='v1.2', nproc=None, overwrite=False,
                      splits=SPLITS):
    """Convert the labels of every split present; returns a summary dict.

    ``out_dir`` defaults to ``root/cityscapes_trainIdLabel``; outputs go to
    ``out_dir/<train|val>/label/<name>.png``.
    """
    if not osp.isdir(root):
        raise FileNotFoundError(f'{root}: dataset folder not found')
    table = load_mapillary_table(osp.join(root, f'config_{version}.json'))
    lut = {i: t for i, (_, t) in enumerate(table)}
    out_root = out_dir or osp.join(root, OUT_DIR)
    tasks = []
    for src_split, dst_split in splits:
        labels = require_dir(root, osp.join(src_split, version, 'labels'), f'{src_split} label')
        for f in list_files(labels, '.png'):
            rel = osp.join(dst_split, 'label', f)
            tasks.append((osp.join(labels, f), osp.join(out_root, rel), rel))
    func = partial(convert_label, read=read_mapillary_label, table=lut, known=range(len(table)),
                   stats=False, overwrite=overwrite)
    results = run_tasks(func, tasks, nproc, name='Mapillary labels')
    unexpected = warn_unexpected([r for r in results if not r['skipped']], 'Mapillary label')
    converted = sum(not r['skipped'] for r in results)
    return dict(num_files=len(results), converted=converted, skipped=len(results) - converted,
                table=table, unexpected_values=unexpected, out_dir=out_root)


def resize_half(task, jpeg_quality=75):
    """One image/label pair (task: img, label, dst_img, dst_label) halved, written atomically."""
    img_path, label_path, dst_img, dst_label = task
    if osp.exists(dst_img) and osp.exists(dst_label):
        return dict(file=dst_img, skipped=True)
    for path in (img_path, label_path):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{path}: file not found')
    try:
        with Image.open(img_path) as img, Image.open(label_path) as label:
            img.load()
            label.load()
            if img.size != label.size:
                raise ValueError(f'{label_path}: size {label.size} differs from its image '
                                 f'{img_path} {img.size}')
            w, h = img.size
            small_img = img.convert('RGB').resize((w // 2, h // 2), resample=Image.BICUBIC)
            small_label = label.resize((w // 2, h // 2), resample=Image.NEAREST)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f'{img_path}: cannot read the image or its label ({e})') from None
    with atomic_output(dst_img) as tmp:
        small_img.save(tmp, format='JPEG', quality=jpeg_quality)
    with atomic_output(dst_label) as tmp:
        small_label.save(tmp, format='PNG')
    return dict(file=dst_img, skipped=False)


def resize_mapillary_half(image_dir, label_dir, dst_image_dir, dst_label_dir, nproc=None,
                          jpeg_quality=75):
    """Halve every ``image_dir/**/<n>.jpg`` (bicubic) and ``label_dir/<n>.png`` (nearest).

    ``jpeg_quality`` 75 is PIL's default, which the release used.
    """
    for folder, what in ((image_dir, 'image'), (label_dir, 'label')):
        if not osp.isdir(folder):
            raise FileNotFoundError(f'{folder}: {what} folder not found')
    for src, dst in ((image_dir, dst_image_dir), (label_dir, dst_label_dir),
                     (image_dir, dst_label_dir), (label_dir, dst_image_dir)):
        if osp.realpath(src) == osp.realpath(dst):
            raise ValueError(f'{dst}: output folder is a source folder; refusing to overwrite')
    tasks = []
    for f in list_files(image_dir, '.jpg'):
        stem = f[:-len('.jpg')]
        tasks.append((osp.join(image_dir, f), osp.join(label_dir, stem + '.png'),
                      osp.join(dst_image_dir, f), osp.join(dst_label_dir, stem + '.png')))
    results = run_tasks(partial(resize_half, jpeg_quality=jpeg_quality), tasks,
                        nproc, name='Mapillary image/label pairs')
    converted = sum(not r['skipped'] for r in results)
    return dict(num_files=len(results), converted=converted, skipped=len(results) - converted)
