"""tools/deploy/export_onnx.py on tiny trained segmentors of every architecture of the
project: onnxruntime's logits against mmseg's own path (data preprocessor + test_step) on
the model as tools/test.py loads it (adapters unmerged), for full and adapter-only
checkpoints, square and non-square inputs, batch 1 and 2; no adapter tensor in the graph."""
import copy
import os.path as osp
import sys

import numpy as np
import onnxruntime as ort
import pytest

from soma.apis.inference import init_model
from soma.datasets import make_synthetic_dg_benchmark

sys.path.insert(0, osp.dirname(__file__))
from _deploy_fixtures import (DINOV2, PEFT_LORA, SOMA, adapter_only, as_graph_input,  # noqa
                              assert_logits_match, converted_dinov2, fcn_head, hf_folder,
                              mmseg_logits, onnx_names, random_images, semantic_fpn,
                              tool_main, trained_checkpoint, write_config)

ONE_THREAD = True  # see tests/conftest.py


def _mask2former(channels):
    from mmengine.config import Config
    from soma.apis.demo import DEMO_CONFIG
    head = copy.deepcopy(Config.fromfile(DEMO_CONFIG).model.decode_head.to_dict())
    head['in_channels'] = [channels] * 4
    return head


# name: backbone (DINOv2 'converted' or a transformers model type), adapter, head, segmentor
# type, checkpoints exported, input sizes (H, W), free batch
CASES = {
    'dinov2_soma_mask2former': ('dinov2', SOMA, 'mask2former', None, ('full', 'adapter'),
                                ((64, 64), (64, 96)), True),
    'dinov2_soma_semfpn': ('dinov2', SOMA, 'semfpn', None, ('full', ), ((64, 96), ), True),
    'dinov2_peft_lora_fcn': ('dinov2', PEFT_LORA, 'fcn', None, ('full', 'adapter'),
                             ((64, 64), ), False),
    'dinov2_frozen_fcn': ('dinov2', {}, 'fcn', 'FrozenBackboneEncoderDecoder', ('full', ),
                          ((96, 64), ), False),
    'hf_dinov3_soma_mask2former': ('dinov3_vit', SOMA, 'mask2former', None,
                                   ('full', 'adapter'), ((64, 96), ), True),
    'hf_dinov2_soma_fcn': ('dinov2', SOMA, 'fcn', None, ('full', ), ((64, 96), ), False),
    'hf_dinov2reg_peft_lora_fcn': ('dinov2_with_registers', PEFT_LORA, 'fcn', None,
                                   ('full', ), ((64, 96), ), True),
    'hf_siglip2_soma_fcn': ('siglip2_vision_model', SOMA, 'fcn', None, ('full', ),
                            ((64, 96), ), True),
}


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('deploy_seg_data')
    make_synthetic_dg_benchmark(root, num_train=2, num_val=1, size=(64, 64))
    return str(root)


@pytest.fixture(scope='module', params=sorted(CASES))
def trained(request, data_root, tmp_path_factory):
    """Config, full checkpoint (random non-zero adapters), adapter-only one, --backbone."""
    name = request.param
    kind, adapter, head, seg_type, ckpts, shapes, dynamic = CASES[name]
    work = tmp_path_factory.mktemp(name)
    hf = name.startswith('hf_')
    if hf:
        backbone_file = hf_folder(work / 'hf', kind)
        backbone = dict(type='HFVisionBackbone', model=backbone_file, out_indices=[0, 1, 2, 3],
                        **adapter)
        channels = 32
    else:
        backbone_file = converted_dinov2(str(work / 'converted.pth'))
        backbone = dict(DINOV2, init_cfg=dict(type='Pretrained', checkpoint=backbone_file),
                        **adapter)
        channels = 64
    neck = None
    if head == 'mask2former':
        decode_head = _mask2former(channels)
    elif head == 'semfpn':
        neck, decode_head = semantic_fpn(channels)
    else:
        decode_head = fcn_head(channels)
    config = write_config(data_root, str(work / 'train'), backbone, decode_head, neck=neck,
                          model_type=seg_type)
    full, changed = trained_checkpoint(config, str(work / 'train'))
    assert changed == (12 if adapter else 0)  # blocks 2, 3 x six linears
    checkpoints = {'full': (full, None)}
    if 'adapter' in ckpts:
        checkpoints['adapter'] = (adapter_only(full, str(work / 'adapter.pth')), backbone_file)
    return dict(name=name, config=config, checkpoints=checkpoints, shapes=shapes,
                dynamic=dynamic, work=work)


def test_onnx_logits_equal_pytorch(trained):
    for kind, (ckpt, backbone) in trained['checkpoints'].items():
        model = init_model(trained['config'], ckpt, backbone=backbone)  # as tools/test.py
        for h, w in trained['shapes']:
            out = str(trained['work'] / f'{kind}_{h}x{w}.onnx')
            args = [trained['config'], ckpt, '--shape', h, w, '--out', out]
            args += ['--backbone', backbone] if backbone else []
            args += ['--dynamic-batch'] if trained['dynamic'] else []
            assert tool_main('deploy/export_onnx.py', *args) == 0
            names = onnx_names(out)
            assert names and not [n for n in names if 'lora' in n.lower()]
            session = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
            images = random_images(2, h, w, seed=h + w)
            want = mmseg_logits(model, images)
            batch_sizes = (1, 2) if trained['dynamic'] else (1, )
            for n in batch_sizes:
                got = session.run(['logits'], {'image': as_graph_input(images[:n])})[0]
                assert_logits_match(got, want[:n])
            if not trained['dynamic']:  # a fixed batch of 1
                assert session.get_inputs()[0].shape[0] == 1
        _assert_adapters_matter(model, want, images)


def _assert_adapters_matter(model, want, images):
    """The random adapters change the logits (so an export ignoring them would fail)."""
    lora_b = [p for n, p in model.named_parameters() if 'lora_B' in n]
    if not lora_b:
        return  # a model without adapters
    for param in lora_b:
        param.data.zero_()
    assert np.abs(mmseg_logits(model, images) - want).max() > 1e-3

