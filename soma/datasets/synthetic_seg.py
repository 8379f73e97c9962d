"""A small synthetic domain-generalisation benchmark for segmentation (demo and tests).

Street-like scenes (sky, buildings, vegetation, road, sidewalk, then cars, people, poles,
signs, ...) drawn with the 19 Cityscapes classes, each class with its own colour and
texture, so a model can learn the task in a few hundred CPU iterations. One source domain
in the GTAV layout and two visually shifted target domains in the Cityscapes layout:

- ``gta/images/<id>.png`` + ``gta/labels/<id>_labelTrainIds.png`` (source: clean, saturated);
- ``fog/leftImg8bit/val/fog/<id>_leftImg8bit.png`` +
  ``fog/gtFine/val/fog/<id>_gtFine_labelTrainIds.png`` (haze: low contrast, blur, grey; the
  "city" is the domain name, so file names are unique across domains);
- ``night/...`` the same layout (dark, blue-shifted, gamma, sensor noise, glow spots).

Only numpy and Pillow are used; the output is a pure function of ``seed``.
"""
import json
import os
import os.path as osp

import numpy as np
from PIL import Image, ImageFilter

__all__ = ['make_synthetic_dg_benchmark', 'SYNTHETIC_TARGET_DOMAINS', 'CITYSCAPES_CLASSES']

CITYSCAPES_CLASSES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
                      'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car',
                      'truck', 'bus', 'train', 'motorcycle', 'bicycle')
SYNTHETIC_TARGET_DOMAINS = ('fog', 'night')
_DONE_FILE = 'synthetic_benchmark.json'

# per class: base colour (RGB) and texture (kind, period in px, amplitude)
_STYLE = {
    0: ((90, 80, 95), ('noise', 0, 12)),          # road
    1: ((200, 150, 200), ('hstripes', 6, 25)),    # sidewalk
    2: ((120, 110, 100), ('grid', 8, 35)),        # building
    3: ((150, 150, 190), ('vstripes', 10, 20)),   # wall
    4: ((190, 160, 140), ('vstripes', 3, 40)),    # fence
    5: ((170, 170, 170), ('flat', 0, 0)),         # pole
    6: ((250, 170, 30), ('flat', 0, 0)),          # traffic light
    7: ((230, 230, 20), ('flat', 0, 0)),          # traffic sign
    8: ((60, 150, 40), ('dots', 4, 45)),          # vegetation
    9: ((150, 230, 140), ('noise', 0, 25)),       # terrain
    10: ((90, 150, 220), ('vgrad', 0, 40)),       # sky
    11: ((220, 40, 70), ('hstripes', 4, 30)),     # person
    12: ((255, 60, 20), ('dots', 3, 40)),         # rider
    13: ((30, 30, 160), ('flat', 0, 0)),          # car
    14: ((20, 90, 110), ('hstripes', 8, 30)),     # truck
    15: ((30, 110, 130), ('grid', 6, 30)),        # bus
    16: ((20, 160, 110), ('vstripes', 6, 30)),    # train
    17: ((40, 20, 240), ('dots', 3, 50)),         # motorcycle
    18: ((140, 40, 40), ('grid', 3, 40)),         # bicycle
}


def _texture(kind, period, amp, h, w, rng):
    yy, xx = np.mgrid[0:h, 0:w]
    phase_y, phase_x = rng.integers(0, max(period, 1), size=2)
    if kind == 'noise':
        t = rng.normal(0, 1, (h, w))
    elif kind == 'hstripes':
        t = np.sign(np.sin(2 * np.pi * (yy + phase_y) / period))
    elif kind == 'vstripes':
        t = np.sign(np.sin(2 * np.pi * (xx + phase_x) / period))
    elif kind == 'grid':
        t = (((yy + phase_y) % period < 2) | ((xx + phase_x) % period < 2)) * 2.0 - 1
    elif kind == 'dots':
        t = ((((yy + phase_y) % period) < period / 2) & (((xx + phase_x) % period) < period / 2))
        t = t * 2.0 - 1
    elif kind == 'vgrad':
        t = 1 - 2 * yy / max(h - 1, 1)
    else:
        t = np.zeros((h, w))
    return t * amp


def _draw_scene(h, w, rng):
    """Return (image float32 HxWx3 in 0..255, label uint8 HxW) of one source-domain scene."""
    label = np.full((h, w), 10, np.uint8)                       # sky
    horizon = int(h * rng.uniform(0.35, 0.5))
    # buildings / walls along the horizon
    x = 0
    while x < w:
        bw = int(rng.integers(w // 6, w // 2))
        top = int(rng.integers(int(h * 0.05), horizon))
        label[top:horizon + 2, x:x + bw] = rng.choice([2, 2, 2, 3])
        x += bw
    # vegetation blobs and terrain
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.integers(int(h * 0.2), horizon + 2), rng.integers(0, w)
        ry, rx = rng.integers(h // 12, h // 5), rng.integers(w // 10, w // 4)
        yy, xx = np.ogrid[0:h, 0:w]
        label[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 8
    # ground: sidewalk band, road, terrain patch
    label[horizon:, :] = 0
    sw = int(rng.integers(h // 16, h // 8))
    label[horizon:horizon + sw, :] = 1
    if rng.random() < 0.5:
        tx = int(rng.integers(0, w // 2))
        label[horizon + sw:, tx:tx + w // 5] = 9
    if rng.random() < 0.5:
        fy = horizon - int(rng.integers(h // 16, h // 8))
        fx = int(rng.integers(0, w // 2))
        label[fy:horizon, fx:fx + w // 3] = 4                   # fence
    # poles with signs / lights
    for _ in range(int(rng.integers(1, 3))):
        px = int(rng.integers(2, w - 3))
        ptop = int(rng.integers(int(h * 0.1), horizon))
        label[ptop:horizon + sw, px:px + max(2, w // 48)] = 5
        cls = rng.choice([6, 7])
        s = max(3, w // 20)
        label[ptop:ptop + s, px - s // 2:px + s // 2 + 1] = cls
    # vehicles and people on the ground
    for _ in range(int(rng.integers(2, 5))):
        cls = int(rng.choice([13, 13, 13, 14, 15, 16, 11, 11, 12, 17, 18]))
        if cls in (11, 12):
            oh, ow = int(rng.integers(h // 6, h // 3)), int(rng.integers(w // 24, w // 12) + 2)
        elif cls in (17, 18):
            oh, ow = int(rng.integers(h // 10, h // 6)), int(rng.integers(w // 10, w // 6))
        elif cls in (14, 15, 16):
            oh, ow = int(rng.integers(h // 5, h // 3)), int(rng.integers(w // 4, w // 2))
        else:
            oh, ow = int(rng.integers(h // 8, h // 5)), int(rng.integers(w // 6, w // 3))
        by = int(rng.integers(horizon + sw // 2, h + 1))
        bx = int(rng.integers(-ow // 2, w - ow // 2))
        y0, x0 = max(by - oh, 0), max(bx, 0)
        if cls in (11, 12):                                     # people: ellipses
            yy, xx = np.ogrid[0:h, 0:w]
            cy, cx = by - oh / 2, bx + ow / 2
            label[((yy - cy) / (oh / 2)) ** 2 + ((xx - cx) / (ow / 2)) ** 2 <= 1] = cls
        else:
            label[y0:by, x0:bx + ow] = cls
    image = np.zeros((h, w, 3), np.float32)
    for cls in np.unique(label):
        colour, (kind, period, amp) = _STYLE[int(cls)]
        jitter = rng.normal(0, 8, 3)
        tex = _texture(kind, period, amp, h, w, rng)
        mask = label == cls
        image[mask] = (np.array(colour, np.float32) + jitter)[None] + tex[mask][:, None]
    image += rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255), label


def _shift(image, domain, rng):
    """Apply the visual shift of a target domain to a clean image (float 0..255)."""
    img = image / 255.0
    if domain == 'fog':
        h = img.shape[0]
        depth = np.linspace(1.0, 0.35, h)[:, None, None]        # far (top) is foggier
        t = np.exp(-rng.uniform(1.2, 1.8) * depth)
        haze = np.array([0.8, 0.82, 0.85]) * rng.uniform(0.9, 1.0)
        img = img * (1 - t) + haze * t
        pil = Image.fromarray(np.uint8(np.clip(img, 0, 1) * 255))
        img = np.asarray(pil.filter(ImageFilter.GaussianBlur(radius=1.0)), np.float32) / 255
    elif domain == 'night':
        img = np.power(img, rng.uniform(1.6, 2.2)) * rng.uniform(0.35, 0.5)
        img = img * np.array([0.75, 0.85, 1.25])                # sodium/blue cast
        yy, xx = np.ogrid[0:img.shape[0], 0:img.shape[1]]
        for _ in range(int(rng.integers(1, 4))):                # street-light glow
            cy, cx = rng.integers(0, img.shape[0] // 2), rng.integers(0, img.shape[1])
            r = img.shape[0] / rng.uniform(5, 9)
            img = img + 0.35 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        img = img + rng.normal(0, 0.04, img.shape)
    else:
        raise ValueError(f'unknown synthetic domain {domain!r}; use one of '
                         f'{SYNTHETIC_TARGET_DOMAINS}')
    return np.clip(img * 255, 0, 255)


def _save_pair(image, label, img_path, label_path):
    os.makedirs(osp.dirname(img_path), exist_ok=True)
    os.makedirs(osp.dirname(label_path), exist_ok=True)
    Image.fromarray(np.uint8(np.round(image))).save(img_path)
    Image.fromarray(label).save(label_path)


def make_synthetic_dg_benchmark(root, num_train=64, num_val=16, size=(96, 96), seed=0,
                                target_domains=SYNTHETIC_TARGET_DOMAINS, overwrite=False):
    """Write the benchmark under ``root``; return a dict of its folders.

    Args:
        root: output folder (created).
        num_train: source (``gta``) images.
        num_val: images per target domain (the target scenes are new scenes, not shifted
            copies of the training ones).
        size: ``(height, width)`` of every image.
        seed: everything is a function of it.
        target_domains: subset of ``('fog', 'night')``.
        overwrite: rewrite even when a complete benchmark with the same settings exists.

    A marker file ``synthetic_benchmark.json`` records the settings; it is written last,
    so an interrupted run is simply redone.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f'num_train and num_val must be >= 1, got {num_train}, {num_val}')
    h, w = int(size[0]), int(size[1])
    if min(h, w) < 32:
        raise ValueError(f'size must be at least 32x32, got {size}')
    for d in target_domains:
        if d not in SYNTHETIC_TARGET_DOMAINS:
            raise ValueError(f'unknown synthetic domain {d!r}; use one of '
                             f'{SYNTHETIC_TARGET_DOMAINS}')
    root = osp.abspath(os.fspath(root))
    settings = dict(version=2, num_train=int(num_train), num_val=int(num_val), size=[h, w],
                    seed=int(seed),
                    target_domains=list(target_domains), classes=list(CITYSCAPES_CLASSES))
    paths = dict(root=root, source=osp.join(root, 'gta'),
                 **{d: osp.join(root, d) for d in target_domains})
    marker = osp.join(root, _DONE_FILE)
    if not overwrite and osp.isfile(marker):
        with open(marker) as f:
            if json.load(f) == settings:
                return paths
    os.makedirs(root, exist_ok=True)
    if osp.isfile(marker):
        os.remove(marker)
    rng = np.random.default_rng(seed)
    for i in range(num_train):
        image, label = _draw_scene(h, w, rng)
        name = f'{i:05d}'
        _save_pair(image, label, osp.join(paths['source'], 'images', f'{name}.png'),
                   osp.join(paths['source'], 'labels', f'{name}_labelTrainIds.png'))
    for d_idx, domain in enumerate(target_domains):
        drng = np.random.default_rng([seed, d_idx + 1])
        for i in range(num_val):
            image, label = _draw_scene(h, w, drng)
            image = _shift(image, domain, drng)
            name = f'{domain}_{i:06d}_000019'
            _save_pair(
                image, label,
                osp.join(paths[domain], 'leftImg8bit', 'val', domain, f'{name}_leftImg8bit.png'),
                osp.join(paths[domain], 'gtFine', 'val', domain,
                         f'{name}_gtFine_labelTrainIds.png'))
    with open(marker + '.tmp', 'w') as f:
        json.dump(settings, f, indent=1)
    os.replace(marker + '.tmp', marker)
    return paths
