"""Benchmark-server submissions (``tools/test.py --submit``) on unlabelled Cityscapes- and
ACDC-layout test folders, with the dataset definitions of the real test-split configs and
the tiny segmentor.

The label ids are checked against the official ``cityscapesscripts`` table, applied here to
the train-id maps of ``--out`` and to predictions made by hand with mmseg's inference.
"""
import copy
import os
import os.path as osp
import sys
import zipfile

import cv2
import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import labels as CS_LABELS
from cityscapesscripts.helpers.labels import trainId2label
from mmengine.config import Config

import soma  # noqa: F401
from soma.apis import test as test_api
from soma.apis.inference import inference_model, init_model
from soma.evaluation.submission import (CITYSCAPES_CLASSES, TRAIN_ID_TO_LABEL_ID,
                                        submission_name, train_ids_to_label_ids)
from soma.utils.checkpoint_io import save_checkpoint_file

sys.path.insert(0, osp.dirname(__file__))
from _ckpt_fixtures import converted_backbone, perturbed_tiny_model  # noqa: E402
from _tool_runner import tool_subprocess  # noqa: E402

ONE_THREAD = True
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TINY_CONFIG = osp.join(osp.dirname(__file__), 'tiny_seg_config.py')
ACDC_TEST = osp.join(REPO, 'configs', 'soma',
                     'soma_dinov2_mask2former_ACDC_1024x1024_bs4x2_acdc_test.py')
CITYS_TEST = osp.join(REPO, 'configs', 'soma', 'soma_dinov2_mask2former_c2bm_cityscapes_test.py')
SIZES = [(40, 72), (54, 96), (36, 36)]  # H, W: not the crop's, not a patch multiple


def official_label_ids(train_ids):
    """The official table (cityscapesscripts' ``trainId2label``) applied pixel by pixel."""
    out = np.full(train_ids.shape, 255, np.int64)
    for train_id in np.unique(train_ids):
        out[train_ids == train_id] = trainId2label[int(train_id)].id
    return out


def test_label_id_table_is_the_official_one():
    official = {label.trainId: label for label in CS_LABELS
                if 0 <= label.trainId < 19 and not label.ignoreInEval}
    assert sorted(official) == list(range(19))
    assert TRAIN_ID_TO_LABEL_ID == tuple(official[i].id for i in range(19))
    assert CITYSCAPES_CLASSES == tuple(official[i].name for i in range(19))
    from mmseg.datasets import CityscapesDataset
    assert CITYSCAPES_CLASSES == tuple(CityscapesDataset.METAINFO['classes'])
    train_ids = np.arange(19).reshape(1, 19)
    assert np.array_equal(train_ids_to_label_ids(train_ids), official_label_ids(train_ids))
    with pytest.raises(ValueError, match='x.png: train id 19'):
        train_ids_to_label_ids(np.array([[0, 19]]), 'x.png')


def test_submission_names():
    assert submission_name('a/berlin/berlin_000123_000019_leftImg8bit.png') == \
        'berlin_000123_000019_labelIds.png'
    assert submission_name('rgb_anon/fog/test/GOPR0475/GOPR0475_frame_000041_rgb_anon.png') == \
        'GOPR0475_frame_000041_labelIds.png'
    assert submission_name('x/img.jpg') == 'img_labelIds.png'


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A full checkpoint of the tiny segmentor whose predictions use many classes."""
    root = tmp_path_factory.mktemp('ckpt')
    save_checkpoint_file(converted_backbone(seed=3), str(root / 'converted.pth'))
    model, g = perturbed_tiny_model(TINY_CONFIG, str(root / 'converted.pth'), 0.3)
    with torch.no_grad():
        head = model.decode_head.conv_seg
        head.weight.copy_(3 * torch.randn(head.weight.shape, generator=g))
    path = str(root / 'full.pth')
    save_checkpoint_file({'state_dict': model.state_dict(),
                          'meta': {'soma': model.backbone.checkpoint_meta()}}, path)
    return path


def _write_images(folder, names, seed, sizes=SIZES):
    rng = np.random.RandomState(seed)
    paths = []
    for i, name in enumerate(names):
        h, w = sizes[i % len(sizes)]
        path = osp.join(folder, name)
        os.makedirs(osp.dirname(path), exist_ok=True)
        # smooth random images: blobs the tiny model labels with several classes
        small = rng.randint(0, 255, (4, 6, 3)).astype(np.uint8)
        cv2.imwrite(path, cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC))
        paths.append(path)
    return paths


def cityscapes_test_split(root, sizes=SIZES):
    """``leftImg8bit/test/<city>/<city>_<seq>_<frame>_leftImg8bit.png``, no gtFine."""
    names = [f'{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png'
             for city, seq, frame in (('berlin', 0, 19), ('berlin', 1, 19), ('bonn', 0, 7))]
    return _write_images(osp.join(root, 'leftImg8bit', 'test'), names, seed=1, sizes=sizes)


def acdc_test_split(root):
    """``rgb_anon/<condition>/test/<recording>/<recording>_frame_<n>_rgb_anon.png``, no gt."""
    paths = []
    for i, cond in enumerate(('fog', 'night', 'rain', 'snow')):
        names = [f'GOPR04{i}{k}/GOPR04{i}{k}_frame_{k:06d}_rgb_anon.png' for k in range(2)]
        paths += _write_images(osp.join(root, 'rgb_anon', cond, 'test'), names, seed=10 + i)
    return paths


def tiny_test_config(real_config, data_root, path):
    """tiny_seg_config.py with the test split, pipeline and evaluator of ``real_config``
    pointed at ``data_root``."""
    real = Config.fromfile(real_config)
    cfg = Config.fromfile(TINY_CONFIG)
    loader = copy.deepcopy(real.test_dataloader)
    loader.update(num_workers=0, persistent_workers=False)
    for ds in loader.dataset.datasets:
        ds.data_root = data_root
    cfg.test_dataloader = loader
    cfg.test_evaluator = real.test_evaluator
    cfg.test_pipeline = loader.dataset.datasets[0].pipeline  # for init_model below
    cfg.test_cfg = dict(type='TestLoop')
    cfg.dump(path)
    return path


@pytest.mark.parametrize('layout', ['cityscapes', 'acdc'])
def test_submit_on_an_unlabelled_test_split(layout, checkpoint, tmp_path):
    data_root = str(tmp_path / 'data')
    images = (cityscapes_test_split if layout == 'cityscapes' else acdc_test_split)(data_root)
    assert not any(d in os.listdir(data_root) for d in ('gtFine', 'gt'))  # no labels at all
    config = tiny_test_config(CITYS_TEST if layout == 'cityscapes' else ACDC_TEST, data_root,
                              str(tmp_path / 'cfg.py'))
    submit, out = tmp_path / 'submission', tmp_path / 'train_ids'
    argv = [config, checkpoint, '--out', str(out), '--submit', str(submit),
            '--work-dir', str(tmp_path / 'work')]
    if layout == 'acdc':  # the command line itself, as a user runs it
        res = tool_subprocess('test.py', *argv)
        assert res.returncode == 0, res.stderr[-3000:]
        assert f'zipped for the test server: {submit}.zip' in res.stdout + res.stderr
    else:
        assert test_api.main(argv) == 0

    # one label-id PNG per image, named after it; the zip beside the folder holds exactly them
    expected = sorted(submission_name(p) for p in images)
    assert sorted(os.listdir(submit)) == expected
    with zipfile.ZipFile(str(submit) + '.zip') as archive:
        assert sorted(archive.namelist()) == expected
        for name in expected:
            assert archive.read(name) == (submit / name).read_bytes()
    assert sorted(os.listdir(out)) == sorted(osp.basename(p) for p in images)

    model = init_model(config, checkpoint)
    seen = set()
    for img in images:
        label_ids = cv2.imread(str(submit / submission_name(img)), cv2.IMREAD_UNCHANGED)
        train_ids = cv2.imread(str(out / osp.basename(img)), cv2.IMREAD_UNCHANGED)
        assert label_ids.shape == train_ids.shape == cv2.imread(img).shape[:2]  # original size
        assert label_ids.dtype == np.uint8
        assert np.array_equal(label_ids, official_label_ids(train_ids))
        # the same prediction as mmseg's inference run by hand
        by_hand = inference_model(model, img).pred_sem_seg.data[0].numpy()
        assert np.array_equal(train_ids, by_hand)
        seen |= set(np.unique(train_ids).tolist())
    assert len(seen) >= 5  # the check covers many rows of the table


def test_submit_refuses_what_it_cannot_write(checkpoint, tmp_path, capsys):
    data_root = str(tmp_path / 'data')
    cityscapes_test_split(data_root)
    config = tiny_test_config(CITYS_TEST, data_root, str(tmp_path / 'cfg.py'))

    def error(argv):
        assert test_api.main(argv + ['--work-dir', str(tmp_path / 'w')]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith('error: '), err
        return err[0]

    # the test split has nothing to compare to: the metric is --submit / --out
    assert 'give tools/test.py --submit DIR' in error([config, checkpoint])
    # no image folder
    missing = tiny_test_config(CITYS_TEST, str(tmp_path / 'none'), str(tmp_path / 'm.py'))
    assert 'none' in error([missing, checkpoint, '--submit', str(tmp_path / 's')])
    # two images of the same name (in two cities) would overwrite each other
    twin = osp.join(data_root, 'leftImg8bit', 'test', 'bonn', 'berlin_000000_000019'
                    '_leftImg8bit.png')
    cv2.imwrite(twin, np.zeros((8, 8, 3), np.uint8))
    err = error([config, checkpoint, '--submit', str(tmp_path / 's')])
    assert 'berlin_000000_000019_labelIds.png' in err and 'overwrite' in err
    assert not osp.exists(str(tmp_path / 's') + '.zip')
    os.remove(twin)
    # label ids need the 19 Cityscapes classes
    other = Config.fromfile(config)
    other.test_dataloader.dataset.datasets[0].metainfo = dict(classes=('road', 'sidewalk'))
    other.dump(str(tmp_path / 'two.py'))
    assert '19 Cityscapes classes' in error([str(tmp_path / 'two.py'), checkpoint,
                                              '--submit', str(tmp_path / 's2')])
    assert not osp.exists(str(tmp_path / 's2') + '.zip')


def test_submit_with_tta(checkpoint, tmp_path):
    """--tta takes the config's tta_pipeline (scales 0.75 and 1 of the image), whose
    LoadAnnotations --submit drops too."""
    data_root = str(tmp_path / 'data')
    images = cityscapes_test_split(data_root, sizes=[(80, 144), (72, 96)])
    config = tiny_test_config(CITYS_TEST, data_root, str(tmp_path / 'cfg.py'))
    submit = tmp_path / 'submission'
    assert test_api.main([config, checkpoint, '--tta', '--submit', str(submit),
                          '--work-dir', str(tmp_path / 'work')]) == 0
    for img in images:
        label_ids = cv2.imread(str(submit / submission_name(img)), cv2.IMREAD_UNCHANGED)
        assert label_ids.shape == cv2.imread(img).shape[:2]
        assert set(np.unique(label_ids)) <= set(TRAIN_ID_TO_LABEL_ID)
