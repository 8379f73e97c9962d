"""Checkpoints of peft-adapted models (``peft_cfg``) through the tools: ``meta['peft']``
(SoMAMetaHook), extract -> merge, fold (``--merge-adapters``).

References: the trained model itself (its state dict and predictions), ``peft``'s own
``merge_and_unload`` on the live model, and an independent listing of the trained keys.
"""
import copy
import os.path as osp
import sys

import pytest
import torch
from mmengine.config import Config

import soma  # noqa: F401
from soma import checkpoints as ck
from soma.checkpoints.fingerprint import backbone_fingerprint
from soma.models.backbones.dinov2 import DinoVisionTransformer
from soma.models.peft_backbone import (init_soma_after_weights, merge_and_unload_backbone,
                                       adapter_of, wrap_backbone)
from soma.models.adapters.peft_tuner import build_peft_config, peft_cfg_of
from soma.utils.checkpoint_io import CheckpointError, load_checkpoint_file

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(__file__)), 'tools'))  # shared helpers
from _tool_runner import REPO, tool_main  # noqa: E402

TARGETS = ['q', 'k', 'v', 'proj', 'fc1', 'fc2']
VIT = dict(img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=2, init_values=1.0,
           out_indices=[0, 1, 2, 3])


def lora(**kw):
    return dict(dict(type='LoraConfig', r=4, lora_alpha=8, target_modules=TARGETS,
                     start_lora_idx=2), **kw)


@pytest.fixture(scope='module')
def pretrained():
    """A converted-layout DINOv2 (plain keys), biases non-zero."""
    torch.manual_seed(3)
    sd = DinoVisionTransformer(**VIT).state_dict()
    return {k: v + 0.05 * torch.randn_like(v) if k.endswith('bias') else v
            for k, v in sd.items()}


def _trained_keys(state_dict, bias_mode):
    """Independent listing of what trains: peft's adapters on the blocks >= 2, and the biases
    of its ``bias`` mode minus the always-frozen and the frozen blocks."""
    keys = set()
    for key in state_dict:
        parts = key.split('.')
        block = int(parts[1]) if key.startswith('blocks.') else None
        if '.lora_' in key:
            keys.add(key)
        elif key.endswith('.bias') and bias_mode != 'none':
            if block is not None and block < 2 or parts[-2] in ('norm1', 'norm2') \
                    or key.startswith('patch_embed'):
                continue
            if bias_mode == 'all' or (block is not None and parts[-2] in TARGETS):
                keys.add(key)
    return keys


# ------------------------------------------------------------------ a real Runner
def _train(tmp_path, pretrained, peft_cfg, ema=True):
    """Two iterations of a tiny peft segmentor with SoMAMetaHook (+ EMAHook); the runner."""
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner
    from soma.datasets import make_synthetic_dg_benchmark
    data = tmp_path / 'data'
    make_synthetic_dg_benchmark(data, num_train=2, num_val=1, size=(64, 64))
    torch.save(pretrained, tmp_path / 'converted.pth')
    cfg = _config(peft_cfg, init_cfg=dict(type='Pretrained',
                                          checkpoint=str(tmp_path / 'converted.pth')))
    cfg.train_dataloader = dict(
        batch_size=1, num_workers=0, sampler=dict(type='InfiniteSampler', shuffle=False),
        dataset=dict(type='CityscapesDataset', data_root=str(data / 'gta'),
                     data_prefix=dict(img_path='images', seg_map_path='labels'),
                     img_suffix='.png', seg_map_suffix='_labelTrainIds.png',
                     pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                               dict(type='PackSegInputs')]))
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=2)
    cfg.optim_wrapper = dict(constructor='PEFTOptimWrapperConstructor',
                             optimizer=dict(type='AdamW', lr=1e-2, weight_decay=0.05))
    cfg.default_hooks = dict(logger=dict(type='LoggerHook', interval=1),
                             checkpoint=dict(type='CheckpointHook', interval=2,
                                             by_epoch=False))
    cfg.custom_hooks = [dict(type='SoMAMetaHook')]
    if ema:
        cfg.custom_hooks.append(dict(type='EMAHook', momentum=0.5, begin_iter=0))
    cfg.work_dir = str(tmp_path / 'work')
    cfg.log_level = 'WARNING'
    cfg.randomness = dict(seed=0)
    with DefaultScope.overwrite_default_scope('mmseg'):
        runner = Runner.from_cfg(cfg)
        runner.train()
    return runner, tmp_path / 'work' / 'iter_2.pth'


def _config(peft_cfg, init_cfg=None):
    cfg = Config.fromfile(osp.join(REPO, 'tests', 'tools', 'tiny_seg_config.py'))
    cfg.model.backbone.update(embed_dim=32, init_values=1.0, lora_cfg=None, peft_cfg=peft_cfg,
                              init_cfg=init_cfg)
    cfg.model.decode_head.in_channels = 32
    cfg.model.decode_head.norm_cfg = dict(type='GN', num_groups=4)
    return cfg


def _model(peft_cfg):
    """The segmentor of the config; without ``peft_cfg`` mmseg's plain EncoderDecoder."""
    from mmengine.registry import DefaultScope
    from soma.registry import SEG_MODELS
    cfg = _config(peft_cfg).model
    if peft_cfg is None:
        cfg.type = 'EncoderDecoder'
    with DefaultScope.overwrite_default_scope('mmseg'):
        return SEG_MODELS.build(cfg)


def _predict(model, x):
    with torch.no_grad():
        return model.eval()(x, mode='tensor')


def test_trained_peft_model_through_the_tools(tmp_path, pretrained):
    peft_cfg = lora(init_lora_weights='pissa', use_dora=True, bias='lora_only')
    runner, final = _train(tmp_path, pretrained, peft_cfg)
    # EMAHook saves the EMA weights as 'state_dict', the live ones as 'ema_state_dict'
    trained_model = [h for h in runner.hooks if type(h).__name__ == 'EMAHook'][0].ema_model.module
    full = load_checkpoint_file(final)  # weights_only: the meta is plain data

    # 1. meta['peft'] rebuilds the adapter config; SoMA's meta is absent
    meta = full['meta']['peft']
    assert 'soma' not in full['meta']
    adapter = adapter_of(trained_model.backbone)
    rebuilt = build_peft_config(meta['peft_cfg'], DinoVisionTransformer(**VIT))
    assert rebuilt.to_dict() == adapter.config.to_dict()
    assert meta['start_lora_idx'] == 2 and meta['base_weight'] == 'residual'
    assert meta['adapter_prefix'] == 'lora_'
    backbone_sd = trained_model.backbone.state_dict()
    assert set(meta['trainable']) == _trained_keys(backbone_sd, 'lora_only')

    # 2. extract: adapters (DoRA magnitude too), the trained target biases, the head;
    #    no base weight (the residual W - s*B0@A0 is recomputed by the merge)
    adapter_path = tmp_path / 'adapter.pth'
    assert tool_main('extract_soma_weights.py', '--final_ckpt', final,
                     '--soma_ckpt', adapter_path) == 0
    extracted = load_checkpoint_file(adapter_path)
    expected = {'backbone.' + k for k in _trained_keys(backbone_sd, 'lora_only')}
    expected |= {k for k in full['state_dict'] if not k.startswith('backbone.')}
    assert set(extracted['state_dict']) == expected
    assert any('lora_magnitude_vector' in k for k in expected)
    assert set(extracted['ema_state_dict']) == {'module.' + k for k in expected}
    assert extracted['meta']['peft'] == dict(meta, backbone_fingerprint=backbone_fingerprint(
        pretrained))  # and the backbone it was trained on

    # 3. merge with the converted backbone: the trained checkpoint, bit for bit
    merged_path = tmp_path / 'merged.pth'
    assert tool_main('merge_soma_weights.py', '--backbone_ckpt', tmp_path / 'converted.pth',
                     '--soma_ckpt', adapter_path, '--merged_ckpt', merged_path) == 0
    merged = load_checkpoint_file(merged_path)
    assert set(merged['state_dict']) == set(full['state_dict'])
    for key, value in full['state_dict'].items():
        assert torch.equal(merged['state_dict'][key], value), key
    for key, value in full['ema_state_dict'].items():
        if key != 'steps':
            assert torch.equal(merged['ema_state_dict'][key], value), key
    # the residual base weights differ from the converted ones: the merge rebuilt them
    assert not torch.equal(merged['state_dict']['backbone.blocks.2.attn.q.weight'],
                           pretrained['blocks.2.attn.q.weight'])

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    reference = _predict(trained_model, x)
    model = _model(peft_cfg)
    ck.load_soma_checkpoint(model, merged_path, strict=True)
    assert torch.equal(_predict(model, x), reference)
    # the same through the test tool's path: the adapter + --backbone, merged in memory
    model = _model(peft_cfg)
    ck.load_soma_checkpoint(model, adapter_path, backbone=tmp_path / 'converted.pth')
    assert torch.equal(_predict(model, x), reference)
    model = _model(peft_cfg)  # the EMA copy: the live model's weights
    ck.load_soma_checkpoint(model, merged_path, use_ema=True)
    assert torch.equal(_predict(model, x), _predict(runner.model, x))

    # 4. fold: a plain backbone checkpoint for the config without peft_cfg
    plain_path = tmp_path / 'plain.pth'
    assert tool_main('generate_full_weights.py', '--backbone_ckpt', tmp_path / 'converted.pth',
                     '--soma_ckpt', adapter_path, '--out', plain_path,
                     '--merge-adapters') == 0
    folded = load_checkpoint_file(plain_path)
    assert folded['meta']['peft']['folded'] is True
    assert not any('lora' in k for k in folded['state_dict'])
    plain_model = _model(None)
    plain_model.load_state_dict(folded['state_dict'], strict=True)
    peft_merged = merge_and_unload_backbone(copy.deepcopy(trained_model.backbone)).state_dict()
    for key, value in peft_merged.items():  # peft's own merge_and_unload of the live model
        assert torch.equal(folded['state_dict']['backbone.' + key], value), key
    torch.testing.assert_close(_predict(plain_model, x), reference, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ each init, by function
def _adapted(peft_cfg, pretrained):
    """A peft-adapted backbone on the pretrained weights, its trainable parameters moved."""
    torch.manual_seed(11)
    backbone = wrap_backbone(DinoVisionTransformer(**VIT, peft_cfg=peft_cfg))
    backbone.load_state_dict(pretrained, strict=False)
    backbone.is_init = True
    init_soma_after_weights(backbone)
    with torch.no_grad():
        for param in backbone.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    return backbone


def _full_checkpoint(backbone):
    """What CheckpointHook + SoMAMetaHook write for a segmentor around ``backbone``."""
    state_dict = {'backbone.' + k: v for k, v in backbone.state_dict().items()}
    state_dict['decode_head.conv_seg.weight'] = torch.randn(19, 16, 1, 1)
    meta = {'peft': adapter_of(backbone).checkpoint_meta(), 'dataset_meta': {'c': [1]}}
    return {'state_dict': state_dict, 'meta': meta}


@pytest.mark.parametrize('kw', [dict(), dict(init_lora_weights='olora'),
                                dict(init_lora_weights='pissa_niter_2'),
                                dict(init_lora_weights='mica', bias='all'),
                                dict(use_dora=True, use_rslora=True, start_lora_idx=0)])
def test_extract_merge_fold_each_init(kw, pretrained):
    backbone = _adapted(lora(**kw), pretrained)
    full = _full_checkpoint(backbone)
    adapter = ck.extract_soma_weights(full)
    inner = backbone.state_dict()
    bias_mode = kw.get('bias', 'none')
    expected = {'backbone.' + k for k in _trained_keys(inner, bias_mode)}
    if kw.get('start_lora_idx') == 0:
        expected = {'backbone.' + k for k in inner if '.lora_' in k}
    if kw.get('init_lora_weights') == 'pissa_niter_2':  # randomised: base weights kept
        expected |= {f'backbone.{k[:k.index(".lora_A")]}.weight' for k in inner
                     if k.endswith('lora_A.default.weight')}
    if kw.get('init_lora_weights') == 'mica':  # MiCA's lora_B is frozen, and kept
        assert not any('lora_B' in k for k in full['meta']['peft']['trainable'])
    assert set(adapter['state_dict']) == expected | {'decode_head.conv_seg.weight'}
    assert adapter['meta'] == dict(full['meta'], peft=dict(
        full['meta']['peft'], backbone_fingerprint=backbone_fingerprint(pretrained)))
    dgod = ck.extract_soma_dgod_weights(full)  # the detector's: the same, no EMA copy
    assert set(dgod['state_dict']) == set(adapter['state_dict']) and 'ema_state_dict' not in dgod

    merged = ck.merge_soma_weights(pretrained, adapter)
    assert set(merged['state_dict']) == set(full['state_dict'])
    for key, value in full['state_dict'].items():
        assert torch.equal(merged['state_dict'][key], value), key

    folded = ck.fold_adapters(merged)
    peft_merged = merge_and_unload_backbone(copy.deepcopy(backbone)).state_dict()
    assert set(folded['state_dict']) == {'backbone.' + k for k in peft_merged} | {
        'decode_head.conv_seg.weight'}
    for key, value in peft_merged.items():
        assert torch.equal(folded['state_dict']['backbone.' + key], value), key
    plain = DinoVisionTransformer(**VIT)
    plain.load_state_dict(peft_merged)
    x = torch.randn(1, 3, 64, 64)
    for y, z in zip(plain.eval()(x), backbone.eval()(x)):
        torch.testing.assert_close(y, z, rtol=1e-4, atol=1e-5)


def test_meta_config_round_trips_through_build_peft_config(pretrained):
    backbone = _adapted(lora(use_dora=True, init_lora_weights='olora', lora_dropout=0.1),
                        pretrained)
    config = adapter_of(backbone).config
    cfg = peft_cfg_of(config)
    assert cfg['type'] == 'LoraConfig' and cfg['layers_to_transform'] == [2, 3]
    assert cfg['target_modules'] == sorted(TARGETS) and 'peft_type' not in cfg
    assert build_peft_config(cfg, torch.nn.Module()).to_dict() == config.to_dict()


# ------------------------------------------------------------------ bad input
def test_peft_keys_without_meta_are_a_one_line_error(tmp_path, pretrained):
    full = _full_checkpoint(_adapted(lora(), pretrained))
    del full['meta']['peft']
    path = tmp_path / 'no_meta.pth'
    torch.save(full, path)
    out = tmp_path / 'adapter.pth'
    assert tool_main('extract_soma_weights.py', '--final_ckpt', path, '--soma_ckpt', out) == 1
    assert not out.exists()
    with pytest.raises(CheckpointError, match=r"no meta\['peft'\]") as info:
        ck.extract_soma_weights(full)
    assert '\n' not in str(info.value)


def test_peft_merge_refusals(tmp_path, pretrained):
    adapter = ck.extract_soma_weights(_full_checkpoint(_adapted(lora(), pretrained)))
    with pytest.raises(ValueError, match='applies to SoMA checkpoints only'):
        ck.extract_soma_weights(_full_checkpoint(_adapted(lora(), pretrained)),
                                semantics='release')
    torch.manual_seed(0)
    wider = DinoVisionTransformer(**dict(VIT, embed_dim=64)).state_dict()
    torch.save(wider, tmp_path / 'wider.pth')
    torch.save(adapter, tmp_path / 'adapter.pth')
    out = tmp_path / 'merged.pth'
    assert tool_main('merge_soma_weights.py', '--backbone_ckpt', tmp_path / 'wider.pth',
                     '--soma_ckpt', tmp_path / 'adapter.pth', '--merged_ckpt', out) == 1
    assert not out.exists()
    with pytest.raises(CheckpointError, match='does not fit') as info:
        ck.merge_soma_weights(wider, adapter)
    assert '\n' not in str(info.value)
    lacking = copy.deepcopy(adapter)
    lacking['state_dict'] = {k: v for k, v in lacking['state_dict'].items() if 'lora' not in k}
    with pytest.raises(CheckpointError, match='no adapter keys'):
        ck.merge_soma_weights(pretrained, lacking)
