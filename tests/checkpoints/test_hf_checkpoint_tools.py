"""Checkpoint tools on an HFVisionBackbone segmentor (a tiny DINOv3 saved by save_pretrained):
extract -> merge -> predict, fold (generate_full_weights --merge-adapters) and
tools/test.py CONFIG ADAPTER --backbone FOLDER, for SoMA (``lora_cfg``) and a peft LoRA with
PiSSA init (``peft_cfg``). The converted backbone of an HF backbone is its transformers folder.

References: the checkpoint the Runner wrote after training (its state dict and predictions),
an independent listing of the trained keys, W_res + s * B @ A in float64, peft's own
``merge_and_unload`` of the trained model, and a plain ``transformers.DINOv3ViTModel``.
"""
import copy
import json
import os
import os.path as osp
import re
import sys

import numpy as np
import pytest
import torch
import transformers

import soma  # noqa: F401
from soma.apis import test as test_api
from soma.apis import train as train_api
from soma.checkpoints import extract_soma_weights, merge_soma_weights
from soma.apis.demo import demo_config
from soma.apis.inference import init_model
from soma.datasets import make_synthetic_dg_benchmark
from soma.models.backbones import HFVisionBackbone
from soma.models.peft_backbone import (init_soma_after_weights, merge_and_unload_backbone,
                                       wrap_backbone)
from soma.utils.checkpoint_io import CheckpointError, load_checkpoint_file, save_checkpoint_file

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(__file__)), 'tools'))  # shared helpers
from _tool_runner import tool_main, tool_opens  # noqa: E402

SIZE = 64
R, ALPHA = 4, 8  # s = 2
ADAPTERS = {
    'soma': dict(lora_cfg=dict(type='soma', r=R, lora_alpha=ALPHA, start_lora_idx=2)),
    'pissa': dict(peft_cfg=dict(type='LoraConfig', r=R, lora_alpha=ALPHA,
                                init_lora_weights='pissa', start_lora_idx=2)),
}
FCN_HEAD = dict(type='FCNHead', in_channels=32, in_index=3, channels=16, num_convs=1,
                concat_input=False, dropout_ratio=0.0, num_classes=19,
                norm_cfg=dict(type='GN', num_groups=4), align_corners=False,
                loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0))


def _dinov3_config(hidden=32):
    return transformers.DINOv3ViTConfig(
        hidden_size=hidden, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=2 * hidden, num_register_tokens=4, patch_size=16,
        pos_embed_rescale=None)


def _save_dinov3(folder, hidden=32, seed=0):
    """A random tiny DINOv3 folder, its biases moved off zero (they must survive a merge)."""
    torch.manual_seed(seed)
    model = transformers.DINOv3ViTModel(_dinov3_config(hidden))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith('bias'):
                param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return _save_dinov3(tmp_path_factory.mktemp('hf') / 'dinov3')


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('hf_seg_data')
    make_synthetic_dg_benchmark(root, num_train=2, num_val=1, size=(SIZE, SIZE))
    return str(root)


def _write_config(data_root, work, folder, adapter):
    cfg = demo_config(data_root, work, 2, val=False, image_size=SIZE)
    cfg.model.backbone = dict(type='HFVisionBackbone', model=folder, out_indices=[0, 1, 2, 3],
                              **ADAPTERS[adapter])
    cfg.model.decode_head = copy.deepcopy(FCN_HEAD)
    cfg.default_hooks.logger.interval = 1
    os.makedirs(work, exist_ok=True)
    path = osp.join(work, 'cfg.py')
    cfg.dump(path)
    return path


def _trained_keys(state_dict, adapter):
    """Independent listing of what trains: the adapters, (SoMA) the mask token and the
    biases of the HF targets in blocks 2 and 3 (bias='all'); peft's bias='none': none."""
    bias = re.compile(r'backbone\.model\.hf_model\.model\.layer\.[23]\.\w+\.\w+_proj\.bias')
    keys = {k for k in state_dict if k.startswith('backbone.') and 'lora_' in k}
    if adapter == 'soma':
        keys |= {k for k in state_dict if bias.fullmatch(k)}
        keys.add('backbone.model.hf_model.embeddings.mask_token')
    return keys | {k for k in state_dict if k.startswith('decode_head.')}


def _logits(model):
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.eval()(x, mode='tensor')


def _read_pngs(directory):
    import mmcv
    names = sorted(os.listdir(directory))
    assert names
    return {n: mmcv.imread(osp.join(directory, n), flag='unchanged') for n in names}


@pytest.mark.parametrize('adapter', ['soma', 'pissa'])
def test_trained_hf_model_through_the_tools(folder, data_root, tmp_path, adapter):
    work = str(tmp_path / 'work')
    config = _write_config(data_root, work, folder, adapter)
    assert train_api.main([config, '--work-dir', work]) == 0
    final = osp.join(work, 'iter_2.pth')
    full = load_checkpoint_file(final)
    assert ('soma' if adapter == 'soma' else 'peft') in full['meta']

    # 1. extract: adapters, trained biases, mask token, head; no base weight
    adapter_path = str(tmp_path / 'adapter.pth')
    assert tool_main('extract_soma_weights.py', '--final_ckpt', final,
                     '--soma_ckpt', adapter_path) == 0
    extracted = load_checkpoint_file(adapter_path)['state_dict']
    assert set(extracted) == _trained_keys(full['state_dict'], adapter)
    assert len([k for k in extracted if 'lora_A' in k]) == 2 * 6  # blocks 2, 3; 6 linears

    # 2. merge with the transformers folder: the trained checkpoint, bit for bit
    merged_path = str(tmp_path / 'merged.pth')
    assert tool_main('merge_soma_weights.py', '--backbone_ckpt', folder, '--soma_ckpt',
                     adapter_path, '--merged_ckpt', merged_path) == 0
    merged = load_checkpoint_file(merged_path)
    assert set(merged['state_dict']) == set(full['state_dict'])
    different = [k for k, v in full['state_dict'].items()
                 if not torch.equal(merged['state_dict'][k], v)]
    assert not different, different[:3]
    prefix = 'backbone.model.hf_model.' if adapter == 'soma' else 'backbone.hf_model.'
    pretrained = transformers.DINOv3ViTModel.from_pretrained(folder).state_dict()
    q = 'model.layer.2.attention.q_proj.weight'  # residual W - s*B0@A0, rebuilt by the merge
    assert not torch.equal(merged['state_dict'][prefix + q], pretrained[q])
    assert torch.equal(merged['state_dict'][prefix + 'model.layer.0.attention.q_proj.weight'],
                       pretrained['model.layer.0.attention.q_proj.weight'])

    want = _logits(init_model(config, final))
    assert torch.equal(_logits(init_model(config, merged_path)), want)
    assert torch.equal(_logits(init_model(config, adapter_path, backbone=folder)), want)

    # 3. tools/test.py CONFIG ADAPTER --backbone FOLDER: what the trained checkpoint gives
    metrics = test_api.test([config, final, '--work-dir', str(tmp_path / 'a'),
                             '--out', str(tmp_path / 'out_a')])
    assert test_api.test([config, adapter_path, '--backbone', folder, '--work-dir',
                          str(tmp_path / 'b'), '--out', str(tmp_path / 'out_b')]) == metrics
    labels_a, labels_b = _read_pngs(tmp_path / 'out_a'), _read_pngs(tmp_path / 'out_b')
    assert labels_a.keys() == labels_b.keys()
    assert all(np.array_equal(labels_a[n], labels_b[n]) for n in labels_a)

    # 4. fold: a plain transformers model under backbone.hf_model, for the config without
    #    adapters; predictions within float rounding
    plain_path = str(tmp_path / 'plain.pth')
    assert tool_main('generate_full_weights.py', '--backbone_ckpt', folder, '--soma_ckpt',
                     adapter_path, '--out', plain_path, '--merge-adapters') == 0
    folded = load_checkpoint_file(plain_path)['state_dict']
    assert not any('lora' in k for k in folded)
    hf_sd = {k[len('backbone.hf_model.'):]: v for k, v in folded.items()
             if k.startswith('backbone.')}
    plain_hf = transformers.DINOv3ViTModel(_dinov3_config())
    plain_hf.load_state_dict(hf_sd, strict=True)  # a plain transformers model
    trained = full['state_dict']
    if adapter == 'soma':  # W_res + s * B @ A, by hand in float64
        layer = prefix + 'model.layer.3.mlp.up_proj'
        ba = trained[layer + '.lora_B.weight'].double() @ trained[layer + '.lora_A.weight'].double()
        w = trained[layer + '.weight'].double() + ALPHA / R * ba
        torch.testing.assert_close(hf_sd['model.layer.3.mlp.up_proj.weight'].double(), w,
                                   rtol=0, atol=1e-6)
    else:  # peft's own merge_and_unload of the trained model
        live = init_model(config, final)
        reference = merge_and_unload_backbone(live.backbone).state_dict()
        assert set(reference) == {k[len('backbone.'):] for k in folded if
                                  k.startswith('backbone.')}
        for key, value in reference.items():
            assert torch.equal(folded['backbone.' + key], value), key
    plain = init_model(config, plain_path, cfg_options={
        'model.type': 'EncoderDecoder', 'model.backbone.lora_cfg': None,
        'model.backbone.peft_cfg': None})
    torch.testing.assert_close(_logits(plain), want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ bad input
@pytest.fixture(scope='module')
def adapters(folder, tmp_path_factory):
    """Extracted adapters (SoMA, peft PiSSA) of fabricated trained HF backbones, on disk."""
    from soma.models.peft_backbone import adapter_of
    out = {}
    for kind, adapter_cfg in ADAPTERS.items():
        backbone = wrap_backbone(HFVisionBackbone(model=folder, out_indices=(0, 1, 2, 3),
                                                  **adapter_cfg))
        init_soma_after_weights(backbone)
        torch.manual_seed(1)
        with torch.no_grad():
            for param in backbone.parameters():
                if param.requires_grad:
                    param.add_(0.05 * torch.randn_like(param))
        state_dict = {'backbone.' + k: v for k, v in backbone.state_dict().items()}
        state_dict['decode_head.conv_seg.weight'] = torch.randn(19, 16, 1, 1)
        meta = ({'soma': backbone.checkpoint_meta()} if kind == 'soma'
                else {'peft': adapter_of(backbone).checkpoint_meta()})
        full = {'state_dict': state_dict, 'meta': meta}
        path = str(tmp_path_factory.mktemp('adapter') / f'{kind}.pth')
        save_checkpoint_file(extract_soma_weights(full), path)
        out[kind] = path, full
    return out


def test_dgod_extract_keeps_the_same_hf_backbone_keys(adapters):
    from soma.checkpoints import extract_soma_dgod_weights
    for path, full in adapters.values():
        adapter = load_checkpoint_file(path)
        assert set(extract_soma_dgod_weights(full)['state_dict']) == set(adapter['state_dict'])


@pytest.mark.parametrize('kind', ['soma', 'pissa'])
def test_merge_reads_the_folder_config_and_the_adapter_once(folder, adapters, tmp_path, kind):
    """(safetensors weights are read by Rust code that Python's audit does not see)"""
    adapter, _ = adapters[kind]
    counts = tool_opens('merge_soma_weights.py', [osp.join(folder, 'config.json'), adapter],
                        '--backbone_ckpt', folder, '--soma_ckpt', adapter,
                        '--merged_ckpt', tmp_path / 'merged.pth')
    assert counts == {'config.json': 1, osp.basename(adapter): 1}


def _merge_fails(capsys, backbone, adapter, out):
    capsys.readouterr()  # drop what earlier calls printed
    rc = tool_main('merge_soma_weights.py', '--backbone_ckpt', backbone, '--soma_ckpt', adapter,
                   '--merged_ckpt', out)
    err = capsys.readouterr().err.strip()
    assert rc == 1 and not osp.exists(out)
    assert err.startswith('error: ') and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize('kind', ['soma', 'pissa'])
def test_merge_refuses_wrong_backbones(folder, adapters, tmp_path, capsys, kind):
    adapter, full = adapters[kind]
    out = str(tmp_path / 'merged.pth')
    merged = merge_soma_weights(osp.join(folder, 'config.json'), adapter)  # names its folder
    assert merged['state_dict'].keys() == full['state_dict'].keys()
    (tmp_path / 'empty').mkdir()
    assert 'config.json not found' in _merge_fails(capsys, tmp_path / 'empty', adapter, out)
    # a transformers folder of another model type
    (tmp_path / 'bert').mkdir()
    (tmp_path / 'bert' / 'config.json').write_text(json.dumps({'model_type': 'bert'}))
    assert 'not a supported ViT-style' in _merge_fails(capsys, tmp_path / 'bert', adapter, out)
    # another ViT family (Dinov2 from transformers), DINOv3 of another width, our DINOv2 file
    torch.manual_seed(0)
    transformers.Dinov2Model(transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
        patch_size=16, image_size=64)).save_pretrained(str(tmp_path / 'dinov2'))
    from soma.models.backbones.dinov2 import DinoVisionTransformer
    converted = str(tmp_path / 'converted.pth')
    torch.save(DinoVisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=4,
                                     num_heads=2, out_indices=(0, 1, 2, 3)).state_dict(),
               converted)
    for other in (tmp_path / 'dinov2', _save_dinov3(tmp_path / 'wider', hidden=64), converted):
        err = _merge_fails(capsys, other, adapter, out)
        assert re.search(r'(no base weight|does not fit|backbone and adapter do not match)',
                         err), err


def test_adapter_only_without_backbone_names_the_folder(folder, data_root, adapters, tmp_path):
    config = _write_config(data_root, str(tmp_path / 'work'), folder, 'soma')
    adapter, _ = adapters['soma']
    with pytest.raises(CheckpointError) as info:
        init_model(config, adapter)
    message = str(info.value)
    assert '\n' not in message and f'--backbone {folder}' in message
