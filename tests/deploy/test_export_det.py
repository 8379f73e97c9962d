"""tools/deploy/export_onnx.py on a tiny trained SoMA + Co-DETR (DGOD demo config): the
``detr`` branch's boxes, scores and labels from onnxruntime against mmdet's own path (data
preprocessor + ``test_step`` with ``eval_module='detr'``, no NMS), full and adapter-only
checkpoints, a non-square input, batch 1 and 2."""
import os.path as osp
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.config import Config

from soma.apis.demo import set_max_iters
from soma.apis.demo_dgod import DGOD_DEMO_CONFIG
from soma.apis.inference import init_model
from soma.datasets.synthetic_dgod import make_diverse_weather, point_config_to

sys.path.insert(0, osp.dirname(__file__))
from _deploy_fixtures import (as_graph_input, converted_dinov2, onnx_names,  # noqa: E402
                              random_images, tool_main, trained_checkpoint)

DEFAULT_SCOPE = 'mmdet'
ONE_THREAD = True  # see tests/conftest.py
H, W = 64, 96  # multiples of the detector's pad_size_divisor (32): nothing is padded
K = 50


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp('det')
    data = str(root / 'diverseWeather')
    make_diverse_weather(data, num_train=2, num_test=1, size=64)
    converted = converted_dinov2(str(root / 'converted.pth'), img_size=128)
    cfg = Config.fromfile(DGOD_DEMO_CONFIG)
    point_config_to(cfg, data)
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=converted)
    cfg.model.eval_module = 'detr'
    cfg.model.test_cfg[0] = dict(max_per_img=K)  # the detr branch without its NMS
    cfg.work_dir = str(root / 'train')
    set_max_iters(cfg, 1, val=False)
    config = str(root / 'cfg.py')
    cfg.dump(config)
    full, changed = trained_checkpoint(config, cfg.work_dir)
    assert changed == 12
    adapter = str(root / 'adapter.pth')
    assert tool_main('extract_soma_dgod_weights.py', '--final_ckpt', full, '--soma_ckpt',
                     adapter) == 0
    return dict(root=root, config=config, checkpoints={'full': (full, None),
                                                      'adapter': (adapter, converted)})


def mmdet_predictions(model, images_bgr):
    """``(boxes, scores, labels)`` of mmdet's test_step, stacked (N x K ...)."""
    h, w = images_bgr.shape[1:3]
    data = dict(inputs=[torch.from_numpy(img.transpose(2, 0, 1).copy()) for img in images_bgr],
                data_samples=[DetDataSample(metainfo=dict(
                    img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0)))
                    for _ in images_bgr])
    with torch.no_grad():
        results = model.test_step(data)
    return tuple(torch.stack([getattr(r.pred_instances, key) for r in results]).numpy()
                 for key in ('bboxes', 'scores', 'labels'))


@pytest.mark.parametrize('kind', ['full', 'adapter'])
def test_detr_branch_equals_mmdet(trained, kind):
    ckpt, backbone = trained['checkpoints'][kind]
    out = str(trained['root'] / f'{kind}.onnx')
    args = [trained['config'], ckpt, '--shape', H, W, '--out', out, '--dynamic-batch']
    assert tool_main('deploy/export_onnx.py', *(args + (['--backbone', backbone]
                                                       if backbone else []))) == 0
    assert not [n for n in onnx_names(out) if 'lora' in n.lower()]
    session = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    assert [o.name for o in session.get_outputs()] == ['boxes', 'scores', 'labels']
    model = init_model(trained['config'], ckpt, backbone=backbone)
    assert model.eval_module == 'detr'
    images = random_images(2, H, W, seed=3)
    boxes, scores, labels = mmdet_predictions(model, images)
    assert boxes.shape == (2, K, 4) and scores.std() > 0
    for n in (1, 2):
        got = session.run(None, {'image': as_graph_input(images[:n])})
        assert got[0].shape == (n, K, 4) and got[2].dtype == np.int64
        np.testing.assert_allclose(got[1], scores[:n], rtol=0, atol=1e-4)
        assert np.array_equal(got[2], labels[:n])
        np.testing.assert_allclose(got[0], boxes[:n], rtol=0, atol=1e-3 * max(H, W))


def test_detection_shape_must_not_be_padded(trained, capsys):
    ckpt, _ = trained['checkpoints']['full']
    out = trained['root'] / 'padded.onnx'
    assert tool_main('deploy/export_onnx.py', trained['config'], ckpt, '--shape', 64, 80,
                     '--out', out) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith('error: ') and 'multiples of 32' in err[-1]
    assert not out.exists()
