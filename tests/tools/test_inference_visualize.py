"""Inference API and tools/visualize.py on the tiny SoMA segmentor."""
import os
import os.path as osp
import sys

import cv2
import numpy as np
import pytest
import torch

from soma import checkpoints as ck
from soma.apis.inference import CITYSCAPES_PALETTE, colorize, inference_model, init_model
from soma.utils.checkpoint_io import save_checkpoint_file

sys.path.insert(0, osp.dirname(__file__))
from _tool_runner import tool_main, tool_subprocess  # noqa: E402
from _ckpt_fixtures import converted_backbone, perturbed_tiny_model  # noqa: E402

TINY_CONFIG = osp.join(osp.dirname(__file__), 'tiny_seg_config.py')


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """A converted backbone, an adapter + head checkpoint of a 'trained' model, two images."""
    root = tmp_path_factory.mktemp('inf')
    save_checkpoint_file(converted_backbone(seed=3), str(root / 'converted.pth'))
    model, g = perturbed_tiny_model(TINY_CONFIG, str(root / 'converted.pth'), 0.1)
    full = {'state_dict': model.state_dict(),
            'meta': {'soma': model.backbone.checkpoint_meta()}}
    ck.extract_file(full, str(root / 'adapter.pth'))
    rng = np.random.RandomState(0)
    images = []
    for i, (h, w) in enumerate([(48, 80), (64, 64)]):
        path = str(root / f'img{i}.jpg')
        cv2.imwrite(path, rng.randint(0, 255, (h, w, 3), dtype=np.uint8))
        images.append(path)
    return dict(root=root, converted=str(root / 'converted.pth'),
                adapter=str(root / 'adapter.pth'), images=images, model=model)


def test_init_model_with_adapter_and_backbone_predicts(files):
    model = init_model(TINY_CONFIG, files['adapter'], backbone=files['converted'])
    assert not model.training and len(model.dataset_meta['classes']) == 19
    assert model.dataset_meta['palette'] == CITYSCAPES_PALETTE
    result = inference_model(model, files['images'][0])
    assert tuple(result.pred_sem_seg.data.shape) == (1, 48, 80)  # the input's own size
    results = inference_model(model, files['images'])
    assert len(results) == 2 and tuple(results[1].pred_sem_seg.data.shape) == (1, 64, 64)
    torch.testing.assert_close(results[0].seg_logits.data, result.seg_logits.data)
    # same prediction as the model the adapter came from
    reference = inference_model(files['model'], files['images'][0])
    assert torch.equal(result.seg_logits.data, reference.seg_logits.data)
    # arrays (BGR, as mmcv reads them) give the same as files
    array = cv2.imread(files['images'][0])
    from_array = inference_model(model, array)
    assert torch.equal(from_array.pred_sem_seg.data, result.pred_sem_seg.data)


def test_tta_prediction(files):
    model = init_model(TINY_CONFIG, files['adapter'], backbone=files['converted'])
    result = inference_model(model, files['images'][0], tta=True)
    assert tuple(result.pred_sem_seg.data.shape) == (1, 48, 80)


def test_init_model_refuses_adapter_without_backbone(files):
    with pytest.raises(ck.CheckpointError, match='--backbone'):
        init_model(TINY_CONFIG, files['adapter'])


def test_colorize():
    label = np.array([[0, 1], [255, 18]])
    out = colorize(label, CITYSCAPES_PALETTE)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == CITYSCAPES_PALETTE[0]
    assert out[1, 0].tolist() == [0, 0, 0] and out[1, 1].tolist() == CITYSCAPES_PALETTE[18]


def test_visualize_cli_writes_side_by_side_pngs(files, tmp_path):
    out = tmp_path / 'vis'
    assert tool_main('visualize.py', TINY_CONFIG, files['adapter'], *files['images'],
                     '--backbone', files['converted'], '--save_dir', out) == 0
    assert sorted(os.listdir(out)) == ['img0.png', 'img1.png']
    vis = cv2.imread(str(out / 'img0.png'))[..., ::-1]
    assert vis.shape == (48, 160, 3)
    model = init_model(TINY_CONFIG, files['adapter'], backbone=files['converted'])
    label = inference_model(model, files['images'][0]).pred_sem_seg.data[0].numpy()
    assert np.array_equal(vis[:, 80:], colorize(label, CITYSCAPES_PALETTE))
    src = cv2.imread(files['images'][0])[..., ::-1]
    assert np.array_equal(vis[:, :80], src)


def test_visualize_cli_errors_leave_nothing(files, tmp_path, capsys):
    out = tmp_path / 'vis'
    res = tool_subprocess('visualize.py', TINY_CONFIG, files['adapter'], files['images'][0],
                          '--save_dir', out)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith('error: ')
    assert 'merge_soma_weights.py' in res.stderr
    assert not out.exists() or not os.listdir(out)
    capsys.readouterr()
    assert tool_main('visualize.py', TINY_CONFIG, files['adapter'], tmp_path / 'nope.png',
                     '--backbone', files['converted'], '--save_dir', out) == 1
    assert 'image not found' in capsys.readouterr().err
    assert not out.exists() or not os.listdir(out)


def test_visualize_cli_bad_images_are_named_after_the_good_ones(files, tmp_path):
    """A 0-byte file, a text file, a folder, a missing file and a second ``img0.*`` (same
    output name): the good images are written, the bad ones named in one line, exit 1."""
    empty = tmp_path / 'empty.png'
    empty.write_bytes(b'')
    text = tmp_path / 'notes.jpg'
    text.write_text('not an image\n')
    (tmp_path / 'other').mkdir()
    twin = tmp_path / 'other' / 'img0.png'
    cv2.imwrite(str(twin), np.zeros((8, 8, 3), np.uint8))
    out = tmp_path / 'vis'
    images = [empty, files['images'][0], text, tmp_path / 'other', tmp_path / 'gone.png',
              files['images'][1], twin]
    res = tool_subprocess('visualize.py', TINY_CONFIG, files['adapter'], *images,
                          '--backbone', files['converted'], '--save_dir', out)
    assert res.returncode == 1
    err = [line for line in res.stderr.splitlines() if line.startswith('error')]
    assert res.stderr.strip().splitlines()[-1] == err[0]  # the last line, the only one
    assert len(err) == 1 and err[0].startswith('error: 5 of 7 images failed: '), err
    for bad, why in ((empty, 'empty file (0 bytes)'), (text, 'not an image'),
                     (tmp_path / 'other', 'a folder'), (tmp_path / 'gone.png', 'not found'),
                     (twin, 'already written')):
        assert f'{bad}: ' in err[0] and why in err[0]
    assert '2 images written' in res.stdout
    assert sorted(os.listdir(out)) == ['img0.png', 'img1.png']  # from the good images
    vis = cv2.imread(str(out / 'img0.png'))
    assert vis.shape == (48, 160, 3)  # img0.jpg's, not overwritten by other/img0.png


def test_visualize_cli_single_bad_image(files, tmp_path, capsys):
    empty = tmp_path / 'empty.png'
    empty.write_bytes(b'')
    out = tmp_path / 'vis'
    assert tool_main('visualize.py', TINY_CONFIG, files['adapter'], empty,
                     '--backbone', files['converted'], '--save_dir', out) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f'error: {empty}: empty file (0 bytes), not an image']
    assert not out.exists()
