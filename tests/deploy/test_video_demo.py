"""tools/video_demo.py on a short video written here with cv2.VideoWriter: PyTorch and
``--onnx``, frames batched, labels against mmseg's single-image inference on the same
decoded frames, the overlay video, bad input."""
import os
import os.path as osp
import sys

import cv2
import numpy as np
import pytest

from soma.apis.inference import inference_model, init_model
from soma.datasets import make_synthetic_dg_benchmark
from soma.deploy.runtime import blend

sys.path.insert(0, osp.dirname(__file__))
from _deploy_fixtures import (DINOV2, SOMA, converted_dinov2, decoded_frames,  # noqa: E402
                              tool_main, trained_checkpoint, write_config)

ONE_THREAD = True  # see tests/conftest.py
H, W, FRAMES = 64, 96, 5


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('video')
    data = root / 'data'
    make_synthetic_dg_benchmark(data, num_train=2, num_val=2, size=(H, W))
    from mmengine.config import Config
    from soma.apis.demo import DEMO_CONFIG
    head = Config.fromfile(DEMO_CONFIG).model.decode_head.to_dict()
    converted = converted_dinov2(str(root / 'converted.pth'))
    backbone = dict(DINOV2, init_cfg=dict(type='Pretrained', checkpoint=converted), **SOMA)
    # the test pipeline keeps 64 x 96 frames as they are: Resize to fit (96, 64)
    config = write_config(str(data), str(root / 'train'), backbone, head,
                          test_cfg=dict(mode='whole'), test_resize=(W, H))
    ckpt, _ = trained_checkpoint(config, str(root / 'train'))
    scene = cv2.imread(sorted(str(p) for p in data.glob('fog/leftImg8bit/val/*/*.png'))[0])
    video = str(root / 'clip.mp4')
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*'mp4v'), 10, (W, H))
    for i in range(FRAMES):
        writer.write(np.roll(scene, 9 * i, axis=1))
    writer.release()
    frames = decoded_frames(video)
    assert len(frames) == FRAMES and frames[0].shape == (H, W, 3)
    model = init_model(config, ckpt)
    want = [inference_model(model, f).pred_sem_seg.data[0].numpy() for f in frames]
    return dict(root=root, config=config, ckpt=ckpt, video=video, frames=frames, want=want,
                palette=model.dataset_meta['palette'])


def _check_outputs(setup, out, labels_dir, share):
    for i, want in enumerate(setup['want']):
        label = cv2.imread(str(labels_dir / f'{i:06d}.png'), cv2.IMREAD_UNCHANGED)
        assert label.dtype == np.uint8 and (label == want).mean() >= share, i
    overlay = decoded_frames(out)
    assert len(overlay) == FRAMES and overlay[0].shape == (H, W, 3)
    # mp4v is lossy: the decoded overlay is close to the blend, not equal
    expected = blend(setup['frames'][2], setup['want'][2], setup['palette'])
    assert np.abs(overlay[2].astype(float) - expected).mean() < 12
    assert not [n for n in os.listdir(osp.dirname(out)) if n.startswith('.')]


def test_pytorch_video(setup, tmp_path):
    out, labels = tmp_path / 'overlay.mp4', tmp_path / 'labels'
    assert tool_main('video_demo.py', setup['config'], setup['ckpt'], setup['video'], '--out',
                     out, '--batch-size', 2, '--labels-dir', labels) == 0
    assert sorted(os.listdir(labels)) == [f'{i:06d}.png' for i in range(FRAMES)]
    _check_outputs(setup, out, labels, 0.999)  # batches of 2 vs one frame: float rounding


def test_onnx_video(setup, tmp_path):
    model = tmp_path / 'model.onnx'
    assert tool_main('deploy/export_onnx.py', setup['config'], setup['ckpt'], '--shape', H, W,
                     '--out', model, '--dynamic-batch') == 0
    out, labels = tmp_path / 'overlay.mp4', tmp_path / 'labels'
    assert tool_main('video_demo.py', setup['config'], setup['ckpt'], setup['video'], '--out',
                     out, '--onnx', model, '--batch-size', 3, '--labels-dir', labels) == 0
    _check_outputs(setup, out, labels, 0.999)


def test_bad_input(setup, tmp_path, capsys):
    out = tmp_path / 'overlay.mp4'
    broken = tmp_path / 'broken.mp4'
    broken.write_bytes(b'\x00\x00\x00\x18ftypmp42 not a video')
    for video, message in ((tmp_path / 'missing.mp4', 'video not found'),
                           (broken, 'cannot open video')):
        assert tool_main('video_demo.py', setup['config'], setup['ckpt'], video,
                         '--out', out) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith('error: ') and message in lines[-1], lines
        assert not os.listdir(tmp_path) or sorted(os.listdir(tmp_path)) == ['broken.mp4']
