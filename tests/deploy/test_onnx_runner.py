"""tools/deploy/onnx_infer.py (soma/deploy/runtime.py): the onnxruntime runner against
tools/test.py and mmseg's own inference, in a process where torch, OpenMMLab and soma
cannot be imported.

Sliding window: a tiny SoMA + Mask2Former with mmseg's own (sequential) slide inference,
crop 64, stride 43, test images 80 x 120 resized to 96 x 144 by the test pipeline: the
runner's label PNGs against those of ``tools/test.py --out`` on the same dataset on disk,
its logits against ``inference_model``'s ``seg_logits``. Whole image: the same model with
``mode='whole'``, images, a folder and a video.
"""
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest

from soma.apis.inference import inference_model, init_model
from soma.datasets import make_synthetic_dg_benchmark
from soma.deploy import runtime

sys.path.insert(0, osp.dirname(__file__))
from _deploy_fixtures import (DINOV2, REPO, SOMA, converted_dinov2,  # noqa: E402
                              decoded_frames, tool_main, trained_checkpoint, write_config)

ONE_THREAD = True  # see tests/conftest.py
CROP, STRIDE = (64, 64), (43, 43)
IMAGE = (80, 120)  # h, w of the test images; the test pipeline resizes them to 96 x 144
RESIZE = (160, 96)
BLOCKED = ('torch', 'mmengine', 'mmcv', 'mmseg', 'mmdet', 'soma')
# imported first by the runner's interpreter (PYTHONPATH): importing a blocked package raises
BLOCKER = f'''import sys


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {BLOCKED!r}:
            raise ImportError(f'{{name}} may not be imported by the onnxruntime runner')
        return None


sys.meta_path.insert(0, Blocker())
'''


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """Synthetic data on disk, a trained slide-mode model (random adapters), its export."""
    root = tmp_path_factory.mktemp('runner')
    data = root / 'data'
    make_synthetic_dg_benchmark(data, num_train=2, num_val=2, size=IMAGE)
    converted = converted_dinov2(str(root / 'converted.pth'))
    from mmengine.config import Config
    from soma.apis.demo import DEMO_CONFIG
    head = Config.fromfile(DEMO_CONFIG).model.decode_head.to_dict()
    backbone = dict(DINOV2, init_cfg=dict(type='Pretrained', checkpoint=converted), **SOMA)
    slide = dict(mode='slide', crop_size=CROP, stride=STRIDE)  # mmseg's sequential windows
    work = str(root / 'train')
    config = write_config(str(data), work, backbone, head, test_cfg=slide, test_resize=RESIZE)
    ckpt, _ = trained_checkpoint(config, work)
    onnx_path = str(root / 'slide.onnx')
    assert tool_main('deploy/export_onnx.py', config, ckpt, '--shape', *CROP, '--out',
                     onnx_path, '--dynamic-batch') == 0
    images = sorted(str(p) for p in data.glob('*/leftImg8bit/val/*/*.png'))
    assert len(images) == 4
    blocker = root / 'blocker'
    blocker.mkdir()
    (blocker / 'sitecustomize.py').write_text(BLOCKER)
    return dict(root=root, data=data, config=config, ckpt=ckpt, onnx=onnx_path,
                images=images, blocker=str(blocker))


def run_runner(setup, *args):
    """``python tools/deploy/onnx_infer.py ARGS`` where torch & co cannot be imported."""
    env = dict(os.environ, PYTHONPATH=setup['blocker'], OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, osp.join(REPO, 'tools', 'deploy', 'onnx_infer.py'),
                           *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)


def read_label(path):
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert label is not None, path
    return label


def test_the_blocker_blocks(setup):
    env = dict(os.environ, PYTHONPATH=setup['blocker'])
    for name in BLOCKED:
        res = subprocess.run([sys.executable, '-c', f'import {name}'], env=env,
                             capture_output=True, text=True)
        assert res.returncode == 1 and 'may not be imported' in res.stderr, name


def test_metadata_of_the_export(setup):
    model = runtime.OnnxSegmentor(setup['onnx'])
    meta = model.meta
    assert meta['task'] == 'segmentation' and meta['test_mode'] == 'slide'
    assert meta['crop_size'] == list(CROP) and meta['stride'] == list(STRIDE)
    assert meta['resize'] == dict(scale=list(RESIZE), scale_factor=None, keep_ratio=True,
                                  interpolation='bilinear')
    assert len(meta['classes']) == 19 and len(meta['palette']) == 19
    assert model.input_hw == CROP and model.fixed_batch is None and model.batch_size == 8
    for bad in (0, -1):  # not the default in disguise
        with pytest.raises(runtime.DeployError, match=f'batch size must be >= 1, got {bad}'):
            runtime.OnnxSegmentor(setup['onnx'], batch_size=bad)


def test_the_runtime_shares_the_one_atomic_writer():
    """Imported as soma.deploy.runtime, its writer is soma.utils.atomic's (one DiskFullError
    class); loaded from its file by onnx_infer.py, it loads that file itself."""
    import soma.utils.atomic
    assert runtime.atomic_output is soma.utils.atomic.atomic_output


def test_slide_labels_equal_tools_test(setup, tmp_path):
    """Runner (no torch) vs ``tools/test.py --out`` label PNGs: >= 99.9 % of the pixels."""
    test_out = tmp_path / 'test_out'
    assert tool_main('test.py', setup['config'], setup['ckpt'], '--out', test_out,
                     '--work-dir', tmp_path / 'work') == 0
    folders = sorted({osp.dirname(p) for p in setup['images']})
    res = run_runner(setup, setup['onnx'], *folders, '--out', tmp_path / 'onnx',
                     '--batch-size', 4)
    assert res.returncode == 0, res.stderr
    names = sorted(os.listdir(test_out))
    assert len(names) == 4
    assert sorted(os.listdir(tmp_path / 'onnx' / 'labels')) == names
    assert sorted(os.listdir(tmp_path / 'onnx' / 'overlays')) == names
    for name in names:
        want, got = read_label(test_out / name), read_label(tmp_path / 'onnx' / 'labels' / name)
        assert got.shape == want.shape == IMAGE and got.dtype == np.uint8
        assert (got == want).mean() >= 0.999, name
        overlay = cv2.imread(str(tmp_path / 'onnx' / 'overlays' / name))
        image = cv2.imread([p for p in setup['images'] if osp.basename(p) == name][0])
        assert np.array_equal(overlay, runtime.blend(image, got, runtime.OnnxSegmentor(
            setup['onnx']).palette))


def test_slide_logits_equal_mmseg(setup):
    """Runner logits at the image size vs mmseg's seg_logits (slide, resize back):
    within 1e-3 of their range; windows batched by 4 or one at a time alike."""
    model = init_model(setup['config'], setup['ckpt'])
    for batch_size in (4, 1):
        onnx = runtime.OnnxSegmentor(setup['onnx'], batch_size=batch_size)
        for path in setup['images'][:2]:
            want = inference_model(model, path).seg_logits.data.numpy()
            label, logits = onnx.predict([runtime.read_image(path)])[0]
            assert logits.shape == want.shape == (19, ) + IMAGE
            span = float(want.max() - want.min())
            assert np.abs(logits - want).max() <= 1e-3 * span
            assert (label == want.argmax(0)).mean() >= 0.999


def test_windows_are_mmsegs():
    from soma.models.segmentors import slide_windows
    for h, w in ((96, 144), (64, 64), (50, 70), (200, 65)):
        assert runtime.slide_windows(h, w, CROP, STRIDE) == slide_windows(h, w, CROP, STRIDE)


def test_resize_and_bilinear_are_mmcv_and_torch():
    import mmcv
    import torch
    import torch.nn.functional as F
    rng = np.random.RandomState(0)
    img = rng.randint(0, 256, (37, 53, 3), dtype=np.uint8)
    for resize in (dict(scale=(160, 96), keep_ratio=True), dict(scale=(20, 30), keep_ratio=False),
                   dict(scale=None, scale_factor=1.5, keep_ratio=True)):
        step = dict(type='Resize', **{k: v for k, v in resize.items() if v is not None})
        want = mmcv.transforms.Resize(**{k: v for k, v in step.items() if k != 'type'})(
            dict(img=img.copy(), img_shape=img.shape[:2]))['img']
        assert np.array_equal(runtime.resize_image(img, resize), want), resize
    logits = rng.randn(5, 9, 14).astype(np.float32)
    for size in ((37, 53), (4, 5), (9, 14)):
        for align in (False, True):
            want = F.interpolate(torch.from_numpy(logits)[None], size=size, mode='bilinear',
                                 align_corners=align)[0].numpy()
            np.testing.assert_allclose(runtime.resize_logits(logits, size, align), want,
                                       rtol=0, atol=1e-5)


@pytest.fixture(scope='module')
def whole(setup, tmp_path_factory):
    """The same model in whole-image mode, exported at the resized image size 96 x 144."""
    root = tmp_path_factory.mktemp('whole')
    onnx_path = str(root / 'whole.onnx')
    assert tool_main('deploy/export_onnx.py', setup['config'], setup['ckpt'], '--shape', 96,
                     144, '--out', onnx_path, '--cfg-options', 'model.test_cfg.mode=whole') == 0
    model = init_model(setup['config'], setup['ckpt'],
                       cfg_options={'model.test_cfg.mode': 'whole'})
    return dict(onnx=onnx_path, model=model, root=root)


def _video(path, frames, fps=5):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), fps,
                             (frames[0].shape[1], frames[0].shape[0]))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return str(path)


def test_whole_images_folder_and_video(setup, whole, tmp_path):
    """Whole-image runner (fixed batch 1) on two images, a folder and a video: labels vs
    mmseg's inference on the same (decoded) pixels."""
    folder = tmp_path / 'in'
    folder.mkdir()
    image = cv2.imread(setup['images'][0])
    cv2.imwrite(str(folder / 'a.png'), image)
    cv2.imwrite(str(folder / 'b.jpg'), cv2.imread(setup['images'][1]))
    frames = [np.roll(image, 7 * i, axis=1) for i in range(3)]
    video = _video(tmp_path / 'clip.mp4', frames)
    out = tmp_path / 'out'
    res = run_runner(setup, whole['onnx'], folder, video, '--out', out, '--frame-labels')
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(out / 'labels')) == ['a.png', 'b.png', 'clip']
    for name, src in (('a', folder / 'a.png'), ('b', folder / 'b.jpg')):
        want = inference_model(whole['model'], str(src)).pred_sem_seg.data[0].numpy()
        assert (read_label(out / 'labels' / f'{name}.png') == want).mean() >= 0.999
    decoded = decoded_frames(video)
    assert len(decoded) == 3
    assert sorted(os.listdir(out / 'labels' / 'clip')) == ['000000.png', '000001.png',
                                                          '000002.png']
    for i, frame in enumerate(decoded):
        want = inference_model(whole['model'], frame).pred_sem_seg.data[0].numpy()
        assert (read_label(out / 'labels' / 'clip' / f'{i:06d}.png') == want).mean() >= 0.999
    overlay = decoded_frames(out / 'clip_overlay.mp4')
    assert len(overlay) == 3 and overlay[0].shape == decoded[0].shape
    assert not [n for n in os.listdir(out) if n.startswith('.')]  # no temporary file left


def test_errors_are_one_line_and_write_nothing(setup, whole, tmp_path):
    out = tmp_path / 'out'
    corrupt = tmp_path / 'corrupt.png'
    corrupt.write_bytes(b'\x89PNG\r\n not really')
    square = tmp_path / 'square.png'  # resized to 96 x 96, the graph takes 96 x 144
    cv2.imwrite(str(square), np.zeros((100, 100, 3), np.uint8))
    (tmp_path / 'notes.txt').write_text('not an image')
    broken_model = tmp_path / 'broken.onnx'
    broken_model.write_bytes(open(whole['onnx'], 'rb').read()[:1000])
    cases = [((whole['onnx'], corrupt), 'cannot read image'),
             ((whole['onnx'], square), 'the model takes 96 x 144'),
             ((whole['onnx'], tmp_path / 'missing.png'), 'input not found'),
             ((broken_model, square), 'not a loadable ONNX model'),
             ((whole['onnx'], tmp_path / 'notes.txt'), 'not an image')]
    for args, message in cases:
        res = run_runner(setup, *args, '--out', out)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1 and len(lines) == 1, res.stderr
        assert lines[0].startswith('error: ') and message in lines[0], lines
        assert not out.exists() or not [f for _, _, fs in os.walk(out) for f in fs]
    onnx = runtime.OnnxSegmentor(whole['onnx'])
    with pytest.raises(runtime.DeployError, match=r'input of shape \(1, 3, 64, 64\), the model '
                                                   r'takes N x 3 x 96 x 144'):
        onnx.run_graph(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(runtime.DeployError, match='batch of 2, the model takes 1'):
        onnx.run_graph(np.zeros((2, 3, 96, 144), np.float32))
