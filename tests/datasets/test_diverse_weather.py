"""DiverseWeatherDataset on the synthetic benchmark: layout, classes, boxes, splits, the
weather shifts, and pointing the DGOD configs at generated data."""
import os.path as osp
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest
from mmengine.config import Config

import soma  # noqa: F401
from soma.datasets.diverse_weather import DIVERSE_WEATHER_CLASSES, DiverseWeatherDataset
from soma.datasets.synthetic_dgod import DOMAINS, make_diverse_weather, point_config_to

DEFAULT_SCOPE = 'mmdet'  # see tests/conftest.py

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('dgod'))
    make_diverse_weather(root, num_train=4, num_test=3, size=(96, 64), seed=1)
    return root


def dataset(root, domain, split, **kwargs):
    return DiverseWeatherDataset(
        data_root=osp.join(root, domain), ann_file=f'VOC2007/ImageSets/Main/{split}.txt',
        data_prefix=dict(sub_data_root='VOC2007/'), pipeline=[], **kwargs)


def test_layout_and_splits(bench):
    assert DIVERSE_WEATHER_CLASSES == ('bus', 'bike', 'car', 'motor', 'person', 'rider', 'truck')
    assert len(dataset(bench, 'daytime_clear', 'train')) == 4
    assert len(dataset(bench, 'daytime_clear', 'test', test_mode=True)) == 3
    for domain in DOMAINS[1:]:  # the target domains are tested on their train.txt
        assert len(dataset(bench, domain, 'train', test_mode=True)) == 3


def test_instances_match_the_xml(bench):
    ds = dataset(bench, 'daytime_clear', 'train')
    assert ds.metainfo['classes'] == DIVERSE_WEATHER_CLASSES
    for info in ds.data_list:
        root = ET.parse(osp.join(bench, 'daytime_clear', 'VOC2007', 'Annotations',
                                 f'{info["img_id"]}.xml')).getroot()
        objects = root.findall('object')
        assert len(info['instances']) == len(objects) > 0
        assert (info['width'], info['height']) == (96, 64)
        assert osp.isfile(info['img_path'])
        for inst, obj in zip(info['instances'], objects):
            assert DIVERSE_WEATHER_CLASSES[inst['bbox_label']] == obj.find('name').text
            x1, y1, x2, y2 = inst['bbox']
            assert 0 <= x1 < x2 < 96 and 0 <= y1 < y2 < 64
            assert int(obj.find('bndbox/xmin').text) - 1 == x1  # VOC is 1-based


def test_weather_shifts(bench):
    def stats(domain):
        img = cv2.imread(osp.join(bench, domain, 'VOC2007', 'JPEGImages', 'test_00000.jpg'))
        return img.mean(), cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()
    clear, night, fog = stats('daytime_clear'), stats('Night-Sunny'), stats('daytime_foggy')
    assert night[0] < 0.6 * clear[0]  # darker
    assert fog[1] < clear[1]  # blurred
    rain = cv2.imread(osp.join(bench, 'night_rainy', 'VOC2007', 'JPEGImages', 'test_00000.jpg'))
    assert rain.mean() < clear[0] and np.percentile(rain, 99) > 100  # dark with bright streaks


def test_generation_is_deterministic(tmp_path):
    make_diverse_weather(str(tmp_path / 'a'), 2, 1, 64, seed=3)
    make_diverse_weather(str(tmp_path / 'b'), 2, 1, 64, seed=3)
    for rel in ('dusk_rainy/VOC2007/Annotations/test_00000.xml',
                'daytime_clear/VOC2007/ImageSets/Main/train.txt'):
        assert (tmp_path / 'a' / rel).read_text() == (tmp_path / 'b' / rel).read_text()


def test_bad_inputs(tmp_path, bench):
    with pytest.raises(FileNotFoundError, match='split file'):
        dataset(bench, 'daytime_clear', 'missing')
    with pytest.raises(ValueError):
        make_diverse_weather(str(tmp_path), num_train=0)


def test_point_config_to_rewrites_every_dataset(bench):
    cfg = Config.fromfile(osp.join(REPO, 'DGOD', 'configs', 'soma', 'soma_dinov2-L_codetr_dg.py'))
    assert point_config_to(cfg, bench) >= 6  # train + 5 test sets (+ the test loader)
    roots = [d.data_root for d in cfg.val_dataloader.dataset.datasets]
    assert roots == [osp.join(bench, d) for d in DOMAINS]
    assert cfg.train_dataloader.dataset.data_root == osp.join(bench, 'daytime_clear')
    assert [d.data_root for d in cfg.test_dataloader.dataset.datasets] == roots
