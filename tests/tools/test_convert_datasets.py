"""Dataset converters on small synthetic replicas of each raw format (real files on disk).

Expected trainIds come from the tables of SPEC section 7, written out here by hand, never
from the converters' own tables.
"""
import importlib.util
import json
import logging
import os
import os.path as osp
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from soma.datasets.convert import (convert_cityscapes, convert_gta, convert_mapillary,
                                   convert_synthia, convert_urbansyn, load_mapillary_table,
                                   resize_mapillary_half)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOLS = osp.join(REPO, 'tools', 'convert_datasets')

# SPEC section 7, by hand
CS_ID_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                  24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
SYNTHIA_TO_TRAIN = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10,
                    10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}
# Mapillary config_v1.2.json "readable" names (index order) and the trainId each must get
MAPILLARY_V12 = [
    ('Bird', 255), ('Ground Animal', 255), ('Curb', 1), ('Fence', 4), ('Guard Rail', 255),
    ('Barrier', 255), ('Wall', 3), ('Bike Lane', 0), ('Crosswalk - Plain', 0),
    ('Curb Cut', 1), ('Parking', 0), ('Pedestrian Area', 1), ('Rail Track', 255),
    ('Road', 0), ('Service Lane', 0), ('Sidewalk', 1), ('Bridge', 255), ('Building', 2),
    ('Tunnel', 255), ('Person', 11), ('Bicyclist', 12), ('Motorcyclist', 12),
    ('Other Rider', 12), ('Lane Marking - Crosswalk', 0), ('Lane Marking - General', 0),
    ('Mountain', 255), ('Sand', 255), ('Sky', 10), ('Snow', 255), ('Terrain', 9),
    ('Vegetation', 8), ('Water', 255), ('Banner', 255), ('Bench', 255), ('Bike Rack', 255),
    ('Billboard', 255), ('Catch Basin', 255), ('CCTV Camera', 255), ('Fire Hydrant', 255),
    ('Junction Box', 255), ('Mailbox', 255), ('Manhole', 255), ('Phone Booth', 255),
    ('Pothole', 255), ('Street Light', 5), ('Pole', 5), ('Traffic Sign Frame', 7),
    ('Utility Pole', 5), ('Traffic Light', 6), ('Traffic Sign (Back)', 7),
    ('Traffic Sign (Front)', 7), ('Trash Can', 255), ('Bicycle', 18), ('Boat', 255),
    ('Bus', 15), ('Car', 13), ('Caravan', 255), ('Motorcycle', 17), ('On Rails', 16),
    ('Other Vehicle', 255), ('Trailer', 255), ('Truck', 14), ('Wheeled Slow', 255),
    ('Car Mount', 255), ('Ego Vehicle', 255), ('Unlabeled', 255)]


# ---------------------------------------------------------------- replicas of raw formats
def expected(ids, table):
    return np.array([[table.get(int(v), 255) for v in row] for row in ids], dtype=np.uint8)


def write_palette_png(path, ids):
    """A 'P' PNG whose index is ``ids``; the palette colours are unrelated to the index."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    img = Image.fromarray(ids.astype(np.uint8), mode='L')
    rng = np.random.default_rng(0)
    img.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tolist())
    assert img.mode == 'P'
    img.save(path)


def write_png16_rgb(path, rgb):
    """A 16-bit RGB PNG written by hand (zlib + struct): channel 0 of ``rgb`` is red."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    h, w, _ = rgb.shape
    raw = b''.join(b'\x00' + rgb[y].astype('>u2').tobytes() for y in range(h))

    def chunk(tag, data):
        return (struct.pack('>I', len(data)) + tag + data
                + struct.pack('>I', zlib.crc32(tag + data) & 0xffffffff))

    png = (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 16, 2, 0, 0, 0))
           + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
    with open(path, 'wb') as f:
        f.write(png)


def write_rgb_png(path, h=6, w=8, seed=0):
    os.makedirs(osp.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def read(path):
    return np.asarray(Image.open(path))


def snapshot(root):
    """{relative path: (mtime_ns, size)} of every file under ``root``."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = osp.join(d, f)
            st = os.stat(p)
            out[osp.relpath(p, root)] = (st.st_mtime_ns, st.st_size)
    return out


def load_tool(name):
    spec = importlib.util.spec_from_file_location(f'tool_{name}', osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append((record.levelno, record.getMessage()))


@pytest.fixture
def mm_log():
    """The messages sent to mmengine's current logger during the test."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    handler = _Records()
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


GTA_IDS = [np.arange(36).reshape(6, 6),  # every Cityscapes id 0..33 plus 34, 35 (unexpected)
           np.tile(np.array([7, 7, 26, 26, 0, 23], dtype=np.int64), (4, 1))]


def make_gta(root, rgb_label=False):
    for i, ids in enumerate(GTA_IDS):
        write_rgb_png(osp.join(root, 'images', f'{i + 1:05d}.png'), *ids.shape, seed=i)
        write_palette_png(osp.join(root, 'labels', f'{i + 1:05d}.png'), ids)
    if rgb_label:
        write_rgb_png(osp.join(root, 'labels', '00003.png'))
    return root


# ---------------------------------------------------------------- GTAV
def test_gta_maps_palette_index_and_writes_stats(tmp_path):
    root = make_gta(str(tmp_path / 'gta'))
    src_before = {f: open(osp.join(root, 'labels', f), 'rb').read()
                  for f in os.listdir(osp.join(root, 'labels'))}
    summary = convert_gta(root, nproc=1)
    for i, ids in enumerate(GTA_IDS):
        out = read(osp.join(root, 'labels', f'{i + 1:05d}_labelTrainIds.png'))
        assert out.dtype == np.uint8 and out.shape == ids.shape
        np.testing.assert_array_equal(out, expected(ids, CS_ID_TO_TRAIN))
    for f, data in src_before.items():  # sources untouched
        assert open(osp.join(root, 'labels', f), 'rb').read() == data

    stats = json.load(open(osp.join(root, 'sample_class_stats.json')))
    assert [s['file'] for s in stats] == ['labels/00001_labelTrainIds.png',
                                          'labels/00002_labelTrainIds.png']
    # file 1: one pixel per id -> one pixel per trainId; file 2: ids 7 x8, 26 x8, 23 x4
    assert stats[0] == dict(file=stats[0]['file'], **{str(c): 1 for c in range(19)})
    assert stats[1] == {'file': 'labels/00002_labelTrainIds.png', '0': 8, '13': 8, '10': 4}
    per_file = json.load(open(osp.join(root, 'sample_class_stats_dict.json')))
    assert per_file['labels/00002_labelTrainIds.png'] == {'0': 8, '13': 8, '10': 4}
    with_class = json.load(open(osp.join(root, 'samples_with_class.json')))
    assert with_class['13'] == [['labels/00001_labelTrainIds.png', 1],
                                ['labels/00002_labelTrainIds.png', 8]]
    assert '5' in with_class and with_class['5'] == [['labels/00001_labelTrainIds.png', 1]]
    summ = json.load(open(osp.join(root, 'class_stats_summary.json')))
    assert summ['num_files'] == 2 and summ['class_pixels']['0'] == 9
    assert summ['class_pixels']['13'] == 9 and summ['class_pixels']['18'] == 1
    assert summ['ignore_pixels'] == (36 - 19) + 4  # void ids of file 1, id 0 of file 2
    assert summ['unexpected_values'] == {'34': 1, '35': 1}
    assert summ['files_with_unexpected_values'] == ['labels/00001_labelTrainIds.png']
    assert summary['converted'] == 2 and summary['skipped'] == 0


def test_gta_idempotent_out_dir_and_nproc(tmp_path):
    root = make_gta(str(tmp_path / 'gta'))
    src = snapshot(root)
    out = str(tmp_path / 'out')
    first = convert_gta(root, out_dir=out, nproc=2)
    assert snapshot(root) == src  # nothing written next to the sources
    assert sorted(snapshot(out)) == sorted(
        ['class_stats_summary.json', 'sample_class_stats.json', 'sample_class_stats_dict.json',
         'samples_with_class.json', 'labels/00001_labelTrainIds.png',
         'labels/00002_labelTrainIds.png'])
    np.testing.assert_array_equal(read(osp.join(out, 'labels/00002_labelTrainIds.png')),
                                  expected(GTA_IDS[1], CS_ID_TO_TRAIN))
    done = snapshot(out)
    second = convert_gta(root, out_dir=out, nproc=2)
    assert second['skipped'] == 2 and second['converted'] == 0
    assert snapshot(out) == done  # outputs and statistics untouched (same mtime)
    assert {k: v for k, v in second.items() if k not in ('converted', 'skipped')} == \
        {k: v for k, v in first.items() if k not in ('converted', 'skipped')}


def test_gta_half_written_output_is_redone_never_seen(tmp_path):
    root = make_gta(str(tmp_path / 'gta'))
    convert_gta(root, nproc=1)
    target = osp.join(root, 'labels', '00001_labelTrainIds.png')
    os.remove(target)  # an interrupted run: the output is simply missing
    summary = convert_gta(root, nproc=1)
    assert summary['converted'] == 1 and summary['skipped'] == 1
    np.testing.assert_array_equal(read(target), expected(GTA_IDS[0], CS_ID_TO_TRAIN))
    assert not [f for f in os.listdir(osp.join(root, 'labels')) if f.endswith('.tmp')]


def test_gta_bad_input(tmp_path, capsys):
    tool = load_tool('gta')
    # wrong folder: the error names the expected sub-folder
    with pytest.raises(FileNotFoundError, match="expected the label folder 'labels'"):
        convert_gta(str(tmp_path))
    assert tool.main([str(tmp_path / 'missing')]) == 1
    assert 'error:' in capsys.readouterr().err
    good = make_gta(str(tmp_path / 'good'))
    assert tool.main([good, '--nproc', '2']) == 0
    np.testing.assert_array_equal(read(osp.join(good, 'labels', '00002_labelTrainIds.png')),
                                  expected(GTA_IDS[1], CS_ID_TO_TRAIN))
    # an RGB label: a clear error naming the file; the good files are still converted
    root = make_gta(str(tmp_path / 'gta'), rgb_label=True)
    with pytest.raises(ValueError, match=r"00003\.png.*mode 'RGB'.*palette"):
        convert_gta(root, nproc=2)
    assert osp.isfile(osp.join(root, 'labels', '00001_labelTrainIds.png'))
    assert not osp.exists(osp.join(root, 'labels', '00003_labelTrainIds.png'))
    assert not osp.exists(osp.join(root, 'sample_class_stats.json'))
    # an unreadable (truncated) label: named in the CLI's one-line error, exit code 1
    with open(osp.join(root, 'labels', '00003.png'), 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n garbage')
    assert tool.main([root, '--nproc', '1']) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error:') and '00003.png' in err[0]
    assert 'cannot read' in err[0]
    assert not [f for f in os.listdir(osp.join(root, 'labels')) if f.endswith('.tmp')]


def test_gta_cli_subprocess_exit_code(tmp_path):
    cli = [sys.executable, osp.join(TOOLS, 'gta.py'), str(tmp_path / 'nowhere')]
    bad = subprocess.run(cli, capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith('error:') and 'nowhere' in bad.stderr
    assert 'Traceback' not in bad.stderr


# ---------------------------------------------------------------- SYNTHIA
def test_synthia_reads_the_class_channel(tmp_path):
    root = str(tmp_path / 'synthia')
    cls = np.arange(25).reshape(5, 5)  # ids 0..22 plus 23, 24 (unexpected)
    rgb = np.zeros((5, 5, 3), dtype=np.uint16)
    rgb[..., 0] = cls  # red = first channel of the file = class id (SYNTHIA README)
    rgb[..., 1] = (cls * 7 + 3) % 23  # instance ids that would be valid classes too
    rgb[..., 2] = 1000
    write_png16_rgb(osp.join(root, 'GT', 'LABELS', '0000000.png'), rgb)
    write_rgb_png(osp.join(root, 'RGB', '0000000.png'), 5, 5)
    summary = convert_synthia(root, nproc=1)
    out = read(osp.join(root, 'GT', 'LABELS', '0000000_labelTrainIds.png'))
    np.testing.assert_array_equal(out, expected(cls, SYNTHIA_TO_TRAIN))
    stats = json.load(open(osp.join(root, 'sample_class_stats.json')))
    assert stats == [dict(file='GT/LABELS/0000000_labelTrainIds.png',
                          **{str(c): 1 for c in range(19)})]
    assert summary['unexpected_values'] == {'23': 1, '24': 1}
    assert summary['ignore_pixels'] == 25 - 19
    assert convert_synthia(root, nproc=1)['skipped'] == 1


def test_synthia_bad_input(tmp_path):
    root = str(tmp_path / 'synthia')
    os.makedirs(osp.join(root, 'RGB'))
    with pytest.raises(FileNotFoundError, match="expected the label folder 'GT/LABELS'"):
        convert_synthia(root)
    os.makedirs(osp.join(root, 'GT', 'LABELS'))
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(osp.join(root, 'GT', 'LABELS', '1.png'))
    with pytest.raises(ValueError, match=r'1\.png.*3-channel'):
        convert_synthia(root, nproc=1)


# ---------------------------------------------------------------- UrbanSyn
def test_urbansyn_19_becomes_255(tmp_path, mm_log):
    root = str(tmp_path / 'urbansyn')
    ids = np.array([list(range(0, 11)), list(range(10, 21))], dtype=np.uint8)
    ids[0, 0] = 255
    os.makedirs(osp.join(root, 'ss'))
    src = osp.join(root, 'ss', 'ss_0001.png')
    Image.fromarray(ids).save(src)
    write_rgb_png(osp.join(root, 'rgb', 'rgb_0001.png'), *ids.shape)
    data = open(src, 'rb').read()
    summary = load_tool('urbansyn').main([root, '--nproc', '1'])
    assert summary == 0
    out = read(osp.join(root, 'ss', 'rgb_0001.png'))
    want = ids.copy()
    want[(ids == 19) | (ids == 20)] = 255
    np.testing.assert_array_equal(out, want)
    assert open(src, 'rb').read() == data  # the source label is never overwritten
    summ = json.load(open(osp.join(root, 'class_stats_summary.json')))
    assert summ['unexpected_values'] == {'20': 1}  # 19 and 255 are known void values
    assert summ['ignore_pixels'] == 3 and summ['class_pixels']['10'] == 2
    warnings = [m for lvl, m in mm_log if lvl == logging.WARNING]
    assert len(warnings) == 1 and 'outside the id map: {20: 1}' in warnings[0]
    stats = json.load(open(osp.join(root, 'sample_class_stats.json')))
    assert stats[0]['file'] == 'ss/rgb_0001.png' and '19' not in stats[0]
    before = snapshot(root)
    assert convert_urbansyn(root, nproc=1)['skipped'] == 1
    assert snapshot(root) == before
    # --out-dir mirrors the layout
    out_dir = str(tmp_path / 'converted')
    convert_urbansyn(root, out_dir=out_dir, nproc=1)
    np.testing.assert_array_equal(read(osp.join(out_dir, 'ss', 'rgb_0001.png')), want)


def test_urbansyn_rejects_colour_labels(tmp_path):
    root = str(tmp_path / 'urbansyn')
    write_rgb_png(osp.join(root, 'ss', 'ss_0001.png'))
    with pytest.raises(ValueError, match=r"ss_0001\.png.*'RGB'.*ss_colour"):
        convert_urbansyn(root, nproc=1)


# ---------------------------------------------------------------- Mapillary
def make_mapillary(root, names):
    os.makedirs(root, exist_ok=True)
    with open(osp.join(root, 'config_v1.2.json'), 'w') as f:
        json.dump({'labels': [{'readable': n, 'name': n.lower()} for n in names]}, f)
    n = len(names)
    for split, seed in (('training', 0), ('validation', 1)):
        ids = np.arange(n + 2).reshape(1, -1).repeat(2, 0)  # all indices + 2 unexpected
        ids = np.repeat(np.repeat(ids, 2, 0), 2, 1)  # 2x2 blocks (nearest halving keeps them)
        write_palette_png(osp.join(root, split, 'v1.2', 'labels', f'img{seed}.png'), ids)
        img = Image.fromarray(np.random.default_rng(seed).integers(
            0, 256, ids.shape + (3, ), dtype=np.uint8))
        os.makedirs(osp.join(root, split, 'images'), exist_ok=True)
        img.save(osp.join(root, split, 'images', f'img{seed}.jpg'))
    return ids


def test_mapillary_name_table_v12():
    from soma.datasets.convert.mapillary import mapillary_name_to_train_id
    names = [n for n, _ in MAPILLARY_V12]
    assert len(names) == 66
    assert [(n, mapillary_name_to_train_id(n)) for n in names] == MAPILLARY_V12


def test_mapillary_convert_and_resize(tmp_path):
    root = str(tmp_path / 'mapillary')
    names = ['Traffic Sign (Front)', 'Traffic Sign (Back)', 'Traffic Light', 'Bicyclist',
             'Motorcyclist', 'Sky', 'On Rails', 'Street Light', 'Curb Cut',
             'Lane Marking - General', 'Bike Rack', 'Pothole', 'Traffic Sign Frame', 'Unlabeled']
    want_by_index = {i: dict(MAPILLARY_V12)[n] for i, n in enumerate(names)}
    ids = make_mapillary(root, names)
    table = load_mapillary_table(osp.join(root, 'config_v1.2.json'))
    assert [t for _, t in table] == [want_by_index[i] for i in range(len(names))]
    tool = load_tool('mapillary2cityscape')
    assert tool.main([root, '--nproc', '2']) == 0
    out_root = osp.join(root, 'cityscapes_trainIdLabel')
    for split, seed in (('train', 0), ('val', 1)):
        out = read(osp.join(out_root, split, 'label', f'img{seed}.png'))
        np.testing.assert_array_equal(out, expected(ids, want_by_index))
    summary = convert_mapillary(root, nproc=1)
    assert summary['skipped'] == 2
    # halve the validation set
    half = osp.join(root, 'half')
    args = [osp.join(root, 'validation', 'images'), osp.join(out_root, 'val', 'label'),
            osp.join(half, 'val_img'), osp.join(half, 'val_label')]
    assert load_tool('mapillary_resize').main(args + ['--nproc', '1']) == 0
    img = Image.open(osp.join(half, 'val_img', 'img1.jpg'))
    label = read(osp.join(half, 'val_label', 'img1.png'))
    h, w = ids.shape
    assert img.size == (w // 2, h // 2) and img.format == 'JPEG'
    np.testing.assert_array_equal(label, expected(ids[::2, ::2], want_by_index))
    before = snapshot(half)
    assert resize_mapillary_half(*args, nproc=2)['skipped'] == 1
    assert snapshot(half) == before


def test_mapillary_bad_input(tmp_path, capsys):
    root = str(tmp_path / 'mapillary')
    os.makedirs(root)
    with pytest.raises(FileNotFoundError, match=r'config_v1\.2\.json'):
        convert_mapillary(root)
    with open(osp.join(root, 'config_v1.2.json'), 'w') as f:
        json.dump({'labels': [{'name': 'road'}]}, f)
    with pytest.raises(ValueError, match="'readable'"):
        convert_mapillary(root)
    make_mapillary(root, ['Road', 'Sky'])
    os.remove(osp.join(root, 'training', 'v1.2', 'labels', 'img0.png'))
    os.rmdir(osp.join(root, 'training', 'v1.2', 'labels'))
    assert load_tool('mapillary2cityscape').main([root]) == 1
    assert "expected the training label folder 'training/v1.2/labels'" in capsys.readouterr().err
    # resize: a missing label is named; an output folder equal to a source is refused
    images = osp.join(root, 'validation', 'images')
    no_labels = str(tmp_path / 'no_labels')
    os.makedirs(no_labels)
    with pytest.raises(ValueError, match=r'img1\.png: file not found'):
        resize_mapillary_half(images, no_labels, str(tmp_path / 'a'), str(tmp_path / 'b'))
    assert not osp.exists(tmp_path / 'a' / 'img1.jpg')  # nothing half-done
    with pytest.raises(ValueError, match='refusing to overwrite'):
        resize_mapillary_half(images, images, str(tmp_path / 'a'), images)


# ---------------------------------------------------------------- Cityscapes
def _polygon_json(path, objects, h=8, w=8):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump({'imgHeight': h, 'imgWidth': w, 'objects': [
            dict(label=lab, polygon=poly, **({'deleted': 1} if deleted else {}))
            for lab, poly, deleted in objects]}, f)


def test_cityscapes_polygons_to_train_ids(tmp_path, capsys):
    pytest.importorskip('cityscapesscripts', reason='needs the official cityscapesscripts '
                        'package (requirements/optional.txt)')
    root = str(tmp_path / 'cityscapes')
    objects = [('road', [[0, 0], [7, 0], [7, 3], [0, 3]], False),
               ('cargroup', [[0, 4], [3, 4], [3, 7], [0, 7]], False),  # 'group' -> car
               ('sky', [[5, 5], [7, 5], [7, 7], [5, 7]], False),
               ('license plate', [[1, 1], [2, 1], [2, 2], [1, 2]], False),  # id -1: not drawn
               ('person', [[0, 0], [7, 0], [7, 7], [0, 7]], True)]  # deleted
    name = 'aachen/aachen_000000_000019_gtFine_polygons.json'
    _polygon_json(osp.join(root, 'gtFine', 'train', name), objects)
    _polygon_json(osp.join(root, 'gtFine', 'val', name.replace('aachen', 'lindau')), objects[:1])
    summary = convert_cityscapes(root, nproc=2)
    assert summary['converted'] == 2 and summary['splits'] == {'train': 1, 'val': 1}
    out = read(osp.join(root, 'gtFine', 'train', 'aachen',
                        'aachen_000000_000019_gtFine_labelTrainIds.png'))
    assert out.shape == (8, 8) and out.dtype == np.uint8
    assert out[1, 5] == 0 and out[2, 2] == 0  # road (the license plate is not drawn)
    assert out[5, 1] == 13  # car from 'cargroup'
    assert out[6, 6] == 10  # sky
    assert out[5, 4] == 255  # background: unlabeled -> 255 (the deleted person is ignored)
    assert set(np.unique(out)) == {0, 13, 10, 255}
    assert open(osp.join(root, 'train.txt')).read() == 'aachen/aachen_000000_000019\n'
    before = snapshot(root)
    assert convert_cityscapes(root, nproc=1)['skipped'] == 2
    assert snapshot(root) == before
    # --out-dir mirrors gtFine/...; unknown labels give one error line naming the file
    out_dir = str(tmp_path / 'out')
    tool = load_tool('cityscapes')
    assert tool.main([root, '-o', out_dir, '--nproc', '1']) == 0
    assert osp.isfile(osp.join(out_dir, 'gtFine', 'val', 'lindau',
                               'lindau_000000_000019_gtFine_labelTrainIds.png'))
    _polygon_json(osp.join(root, 'gtFine', 'train', 'aachen', 'x_gtFine_polygons.json'),
                  [('dragon', [[0, 0], [1, 0], [1, 1]], False)])
    assert tool.main([root, '--nproc', '1']) == 1
    err = capsys.readouterr().err
    assert "x_gtFine_polygons.json: unknown Cityscapes label 'dragon'" in err


# ---------------------------------------------------------------- mmseg dataset configs
def _config(name):
    path = osp.join(REPO, 'configs', '_base_', 'datasets', name)
    if not osp.isfile(path):
        pytest.skip(f'{path} does not exist (yet)')
    from mmengine.config import Config
    return Config.fromfile(path)


def _load_first(cfg, data_root):
    pytest.importorskip('mmcv.ops', reason='mmseg needs mmcv')
    import mmseg.datasets  # noqa: F401  (registers datasets and transforms)
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    init_default_scope('mmseg')
    cfg = dict(cfg, data_root=data_root)
    dataset = DATASETS.build(cfg)
    assert len(dataset) >= 1
    sample = dataset[0]
    gt = sample['data_samples'].gt_sem_seg.data.numpy()
    assert set(np.unique(gt)) <= set(range(19)) | {255}
    return dataset, sample


def test_converted_folders_load_through_dataset_configs(tmp_path):
    # GTAV (images 00001.png pair with labels/00001_labelTrainIds.png)
    root = make_gta(str(tmp_path / 'gta'))
    convert_gta(root, nproc=1)
    ds, sample = _load_first(_config('gta_512x512.py').train_gta, root)
    assert len(ds) == 2 and sample['data_samples'].seg_map_path.endswith(
        'labels/00001_labelTrainIds.png')
    # SYNTHIA
    root = str(tmp_path / 'synthia')
    rgb = np.zeros((32, 48, 3), np.uint16)
    rgb[..., 0] = 3
    write_png16_rgb(osp.join(root, 'GT', 'LABELS', '0000001.png'), rgb)
    write_rgb_png(osp.join(root, 'RGB', '0000001.png'), 32, 48)
    convert_synthia(root, nproc=1)
    ds, sample = _load_first(_config('synthia_512x512.py').train_syn, root)
    assert set(np.unique(sample['data_samples'].gt_sem_seg.data.numpy())) <= {0, 255}
    # UrbanSyn (rgb/rgb_0001.png pairs with the converted ss/rgb_0001.png)
    root = str(tmp_path / 'urbansyn')
    os.makedirs(osp.join(root, 'ss'))
    Image.fromarray(np.full((32, 48), 19, np.uint8)).save(osp.join(root, 'ss', 'ss_0001.png'))
    write_rgb_png(osp.join(root, 'rgb', 'rgb_0001.png'), 32, 48)
    convert_urbansyn(root, nproc=1)
    ds, sample = _load_first(_config('urbansyn_512x512.py').train_ur, root)
    assert set(np.unique(sample['data_samples'].gt_sem_seg.data.numpy())) == {255}
    # Mapillary train and halved val
    root = str(tmp_path / 'mapillary')
    make_mapillary(root, ['Road', 'Sky'])
    convert_mapillary(root, nproc=1)
    resize_mapillary_half(osp.join(root, 'validation', 'images'),
                          osp.join(root, 'cityscapes_trainIdLabel', 'val', 'label'),
                          osp.join(root, 'half', 'val_img'), osp.join(root, 'half', 'val_label'),
                          nproc=1)
    cfg = _config('mapillary_512x512.py')
    _load_first(cfg.train_mapillary, root)
    _, sample = _load_first(cfg.val_mapillary, root)
    assert sample['data_samples'].seg_map_path.endswith('half/val_label/img1.png')


def test_converted_cityscapes_loads_with_1_16_split(tmp_path):
    pytest.importorskip('cityscapesscripts', reason='needs cityscapesscripts')
    root = str(tmp_path / 'cityscapes')
    for i in range(2):
        stem = f'aachen/aachen_00000{i}_000019'
        _polygon_json(osp.join(root, 'gtFine', 'train', stem + '_gtFine_polygons.json'),
                      [('road', [[0, 0], [47, 0], [47, 15], [0, 15]], False)], h=32, w=48)
        write_rgb_png(osp.join(root, 'leftImg8bit', 'train', stem + '_leftImg8bit.png'), 32, 48)
    convert_cityscapes(root, nproc=1)
    ds, _ = _load_first(_config('cityscapes_512x512.py').train_cityscapes, root)
    assert len(ds) == 2
    # the 1/16 split file has the format of the written train.txt: one city/stem per line
    with open(osp.join(root, 'train_1_16_v1.txt'), 'w') as f:
        f.write(open(osp.join(root, 'train.txt')).read().splitlines()[1] + '\n')
    ds, sample = _load_first(_config('cityscapes_1-16_1024x1024.py').train_cityscapes_1_16,
                             root)
    assert len(ds) == 1 and 'aachen_000001_000019' in sample['data_samples'].img_path
