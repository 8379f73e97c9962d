"""A tiny synthetic Diverse Weather benchmark (VOC XML layout) for demos and tests.

``make_diverse_weather(root, ...)`` writes, for each of the five domain folders,
``<root>/<domain>/VOC2007/{JPEGImages,Annotations,ImageSets/Main/{train,test}.txt}``.
Objects of the 7 classes are drawn as coloured shapes on a street-like background; each
adverse domain applies a weather-like shift to the same kind of scene: darkening for
night, darkening plus rain streaks for rain, blur plus grey haze for fog.

Like the real benchmark, the model trains on ``daytime_clear/.../train.txt`` and is
tested on ``daytime_clear/.../test.txt`` and on the ``train.txt`` of the four adverse
domains; so ``daytime_clear`` gets ``num_train`` + ``num_test`` images and every other
domain ``num_test`` images (listed in both its ``train.txt`` and ``test.txt``).
"""
import os
import os.path as osp
import xml.etree.ElementTree as ET

import cv2
import numpy as np

from soma.utils.atomic import atomic_output

CLASSES = ('bus', 'bike', 'car', 'motor', 'person', 'rider', 'truck')
DOMAINS = ('daytime_clear', 'Night-Sunny', 'dusk_rainy', 'night_rainy', 'daytime_foggy')

# (BGR colour, shape, aspect ratio h/w) per class: distinct enough to be learnable.
_LOOKS = {
    'bus': ((40, 200, 250), 'rect', 0.6),
    'bike': ((200, 60, 40), 'ring', 1.0),
    'car': ((40, 40, 220), 'rect', 0.5),
    'motor': ((200, 40, 200), 'ellipse', 0.8),
    'person': ((60, 200, 60), 'ellipse', 2.2),
    'rider': ((230, 230, 40), 'triangle', 1.6),
    'truck': ((30, 110, 160), 'rect', 0.9),
}


def _background(rng, w, h):
    img = np.empty((h, w, 3), np.float32)
    horizon = int(h * rng.uniform(0.35, 0.5))
    sky = np.array([235, 205, 170], np.float32) * rng.uniform(0.85, 1.0)
    road = np.array([105, 105, 110], np.float32) * rng.uniform(0.8, 1.2)
    img[:horizon] = sky
    img[horizon:] = road
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return img


def _draw(img, name, box):
    colour, shape, _ = _LOOKS[name]
    x1, y1, x2, y2 = box
    if shape == 'rect':
        cv2.rectangle(img, (x1, y1), (x2, y2), colour, -1)
        cv2.rectangle(img, (x1, y1), (x2, y2), (20, 20, 20), 1)
    elif shape == 'ellipse':
        centre, axes = ((x1 + x2) // 2, (y1 + y2) // 2), ((x2 - x1) // 2, (y2 - y1) // 2)
        cv2.ellipse(img, centre, axes, 0, 0, 360, colour, -1)
    elif shape == 'ring':
        centre, axes = ((x1 + x2) // 2, (y1 + y2) // 2), ((x2 - x1) // 2, (y2 - y1) // 2)
        cv2.ellipse(img, centre, axes, 0, 0, 360, colour, max(2, (x2 - x1) // 6))
    else:  # triangle
        pts = np.array([[(x1 + x2) // 2, y1], [x1, y2], [x2, y2]], np.int32)
        cv2.fillPoly(img, [pts], colour)


def _random_objects(rng, w, h, max_objects):
    objects = []
    for _ in range(rng.integers(1, max_objects + 1)):
        name = CLASSES[rng.integers(len(CLASSES))]
        aspect = _LOOKS[name][2]
        bw = int(min(w, h) * rng.uniform(0.18, 0.4))
        bh = int(min(bw * aspect, h * 0.7))
        bw, bh = max(bw, 6), max(bh, 6)
        for _ in range(10):  # a few tries to keep objects apart
            x1, y1 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            box = (x1, y1, x1 + bw - 1, y1 + bh - 1)
            if all(_overlap(box, other) < 0.1 for _, other in objects):
                objects.append((name, box))
                break
    return objects


def _overlap(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0] + 1) * (a[3] - a[1] + 1), (b[2] - b[0] + 1) * (b[3] - b[1] + 1))
    return iw * ih / smaller


def _weather(rng, img, domain):
    """Apply the domain's weather-like appearance shift to a float BGR image."""
    h, w = img.shape[:2]
    if domain in ('Night-Sunny', 'night_rainy'):
        img = img * rng.uniform(0.25, 0.4) + np.array([18, 4, 0], np.float32)
    elif domain == 'dusk_rainy':
        img = img * rng.uniform(0.55, 0.7) + np.array([0, 10, 30], np.float32)
    if domain in ('dusk_rainy', 'night_rainy'):
        streaks = np.zeros((h, w), np.float32)
        for _ in range(max(4, (h * w) // 150)):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            length = int(rng.integers(h // 12 + 2, h // 5 + 3))
            cv2.line(streaks, (x, y), (x + length // 4, y + length), 1.0, 1)
        img = img * (1 - 0.5 * streaks[..., None]) + 200 * 0.5 * streaks[..., None]
    if domain == 'daytime_foggy':
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=max(0.8, w / 96))
        haze = rng.uniform(0.45, 0.6)
        img = img * (1 - haze) + 200 * haze
    return img


def _write_xml(path, filename, w, h, objects):
    ann = ET.Element('annotation')
    ET.SubElement(ann, 'folder').text = 'VOC2007'
    ET.SubElement(ann, 'filename').text = filename
    size = ET.SubElement(ann, 'size')
    for tag, value in (('width', w), ('height', h), ('depth', 3)):
        ET.SubElement(size, tag).text = str(value)
    for name, (x1, y1, x2, y2) in objects:
        obj = ET.SubElement(ann, 'object')
        ET.SubElement(obj, 'name').text = name
        ET.SubElement(obj, 'difficult').text = '0'
        box = ET.SubElement(obj, 'bndbox')
        # VOC coordinates are 1-based; mmdet's XMLDataset subtracts 1 again.
        for tag, value in (('xmin', x1), ('ymin', y1), ('xmax', x2), ('ymax', y2)):
            ET.SubElement(box, tag).text = str(value + 1)
    ET.ElementTree(ann).write(path)


def _write_lines(path, lines):
    with atomic_output(path) as tmp:
        with open(tmp, 'w') as f:
            f.write(''.join(f'{line}\n' for line in lines))


def make_diverse_weather(root, num_train=8, num_test=4, size=96, seed=0, max_objects=3):
    """Write the synthetic benchmark under ``root``; return ``{domain: folder}``.

    ``size`` is an int (square images) or ``(width, height)``.
    """
    if num_train < 1 or num_test < 1:
        raise ValueError(f'num_train and num_test must be >= 1, got {num_train}, {num_test}')
    w, h = (size, size) if isinstance(size, int) else tuple(size)
    if min(w, h) < 32:
        raise ValueError(f'size must be at least 32 pixels, got {size}')
    rng = np.random.default_rng(seed)
    folders = {}
    for domain in DOMAINS:
        voc = osp.join(root, domain, 'VOC2007')
        for sub in ('JPEGImages', 'Annotations', osp.join('ImageSets', 'Main')):
            os.makedirs(osp.join(voc, sub), exist_ok=True)
        splits = {'test': num_test}
        if domain == DOMAINS[0]:
            splits = {'train': num_train, 'test': num_test}
        ids = {}
        for split, count in splits.items():
            ids[split] = []
            for i in range(count):
                img_id = f'{split}_{i:05d}'
                objects = _random_objects(rng, w, h, max_objects)
                img = _background(rng, w, h)
                for name, box in objects:
                    _draw(img, name, box)
                img = np.clip(_weather(rng, img, domain), 0, 255).astype(np.uint8)
                if not cv2.imwrite(osp.join(voc, 'JPEGImages', f'{img_id}.jpg'), img):
                    raise OSError(f'could not write image {img_id}.jpg under {voc}')
                _write_xml(osp.join(voc, 'Annotations', f'{img_id}.xml'), f'{img_id}.jpg', w, h,
                           objects)
                ids[split].append(img_id)
        train_ids = ids.get('train', ids['test'])
        _write_lines(osp.join(voc, 'ImageSets', 'Main', 'train.txt'), train_ids)
        _write_lines(osp.join(voc, 'ImageSets', 'Main', 'test.txt'), ids['test'])
        folders[domain] = osp.join(root, domain)
    return folders


def point_config_to(cfg, root, prefix='data/diverseWeather'):
    """Rewrite every ``data_root`` under ``prefix`` in ``cfg`` (in place) to ``root``.

    The DGOD configs read ``data/diverseWeather/<domain>``; this points them at a
    generated benchmark. Returns the number of rewritten dataset entries.
    """
    count = 0
    if hasattr(cfg, 'keys'):  # dict, ConfigDict or mmengine Config
        for key in list(cfg.keys()):
            child = cfg[key]
            if key == 'data_root' and isinstance(child, str) and \
                    child.rstrip('/').startswith(prefix):
                cfg[key] = osp.join(root, child.rstrip('/')[len(prefix):].lstrip('/'))
                count += 1
            else:
                count += point_config_to(child, root, prefix)
    elif isinstance(cfg, (list, tuple)):
        count += sum(point_config_to(child, root, prefix) for child in cfg)
    return count


__all__ = ['CLASSES', 'DOMAINS', 'make_diverse_weather', 'point_config_to']
