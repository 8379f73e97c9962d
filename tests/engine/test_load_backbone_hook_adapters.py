"""``LoadBackboneHook`` completing loaded checkpoints of every adapter kind.

* the EMA copy's own backbone entries (trained biases of a plain or ``peft`` backbone) are
  never replaced by the converted backbone's (the sentinel values survive);
* a ``peft`` PiSSA / OLoRA adapter-only checkpoint is completed as the merge tool completes it
  (``merge_peft_weights`` on the same files): the adapted base weights are peft's residual
  ``W - s*B0@A0`` recomputed from the converted backbone, not W_pretrained.
"""
import copy
import os.path as osp

import pytest
import torch
from mmengine.runner import Runner

import soma  # noqa: F401
from soma.checkpoints import extract_soma_weights
from soma.checkpoints import merge_soma_weights as merge_peft_weights
from soma.apis.demo import demo_config
from soma.datasets import make_synthetic_dg_benchmark
from soma.engine.hooks import LoadBackboneHook
from soma.models.backbones.dinov2 import DinoVisionTransformer
from soma.utils.checkpoint_io import load_checkpoint_file
from conftest import TINY_FCN_HEAD  # noqa: E402

ONE_THREAD = True
SIZE = 64
TARGETS = ['q', 'k', 'v', 'proj', 'fc1', 'fc2']


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('synthetic_seg_hook')
    make_synthetic_dg_benchmark(root, num_train=4, num_val=1, size=(SIZE, SIZE))
    return str(root)


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    torch.manual_seed(5)
    src = DinoVisionTransformer(img_size=SIZE, patch_size=16, embed_dim=64, depth=4, num_heads=2,
                                init_values=1.0, out_indices=[0, 1, 2, 3])
    state = {k: v + 0.05 * torch.randn_like(v) if k.endswith('bias') else v.detach().clone()
             for k, v in src.state_dict().items()}
    path = str(tmp_path_factory.mktemp('converted') / 'converted.pth')
    torch.save(state, path)
    return path


def _cfg(data_root, work_dir, converted, kind, lr=0.0, load_from=None, init=True):
    cfg = demo_config(data_root, work_dir, 1, val=False, image_size=SIZE)
    cfg.model.decode_head = copy.deepcopy(TINY_FCN_HEAD)
    cfg.default_hooks.checkpoint.interval = 1
    cfg.custom_hooks = [dict(type='SoMAMetaHook'),
                        dict(type='LoadBackboneHook', checkpoint_path=converted)]
    cfg.optim_wrapper.optimizer.lr = lr
    cfg.randomness = dict(seed=0)
    cfg.load_from = load_from
    if kind == 'plain':
        cfg.model.type = 'EncoderDecoder'
        cfg.model.backbone.lora_cfg = None
    elif kind == 'peft':
        cfg.model.backbone.lora_cfg = None
        cfg.model.backbone.peft_cfg = dict(
            type='LoraConfig', r=4, lora_alpha=8, target_modules=TARGETS, start_lora_idx=2,
            init_lora_weights=init, bias='all')
    return cfg


@pytest.mark.parametrize('kind', ['plain', 'peft'])
def test_the_ema_copys_own_backbone_entries_are_kept(data_root, converted, tmp_path, kind):
    runner = Runner.from_cfg(_cfg(data_root, str(tmp_path / 'work'), converted, kind))
    state = runner.model.state_dict()
    trained = ['backbone.blocks.3.attn.q.bias', 'backbone.blocks.2.mlp.fc1.bias']
    keep = [k for k in state if not k.startswith('backbone.') or '.lora_' in k] + trained
    ckpt = {'state_dict': {k: state[k].clone() + 0.25 for k in keep},
            'ema_state_dict': {f'module.{k}': torch.full_like(state[k], 7.0) for k in keep}}
    if kind == 'peft':
        adapter = runner.model.backbone.peft_adapter
        ckpt['meta'] = {'peft': adapter.checkpoint_meta()}
    sentinel = {k: v.clone() for k, v in ckpt['ema_state_dict'].items()}
    own = {k: v.clone() for k, v in ckpt['state_dict'].items()}
    LoadBackboneHook(converted).after_load_checkpoint(runner, ckpt)
    for key, value in sentinel.items():
        assert torch.equal(ckpt['ema_state_dict'][key], value), key
    for key, value in own.items():
        assert torch.equal(ckpt['state_dict'][key], value), key
    # the keys the checkpoint lacked came from the converted backbone, in both copies
    file = torch.load(converted)
    q = 'backbone.blocks.0.attn.q.weight'
    assert torch.equal(ckpt['state_dict'][q], file['blocks.0.attn.q.weight'])
    assert torch.equal(ckpt['ema_state_dict']['module.' + q], file['blocks.0.attn.q.weight'])


def _assert_state_equals(model, expected):
    state = model.state_dict()
    assert set(expected) == set(state)
    different = [k for k, v in expected.items() if not torch.equal(state[k], v)]
    assert not different, different[:3]


@pytest.mark.parametrize('init', ['pissa', 'olora'])
def test_a_peft_adapter_checkpoint_is_completed_as_the_merge_tool_does(data_root, converted,
                                                                       tmp_path, init):
    # one real step from the converted backbone: peft's init runs on the loaded weights
    first = _cfg(data_root, str(tmp_path / 'first'), converted, 'peft', lr=1e-2, init=init)
    Runner.from_cfg(first).train()
    trained = load_checkpoint_file(osp.join(first.work_dir, 'iter_1.pth'))
    assert trained['meta']['peft']['base_weight'] == 'residual'
    adapter = str(tmp_path / 'adapter.pth')
    torch.save(extract_soma_weights(trained), adapter)
    assert not any(k.endswith('attn.q.weight') for k in load_checkpoint_file(adapter)[
        'state_dict'])  # the residual base weights are not in the adapter file
    # the hook completes the adapter-only checkpoint on load_from
    cfg = _cfg(data_root, str(tmp_path / 'second'), converted, 'peft', load_from=adapter,
               init=init)
    runner = Runner.from_cfg(cfg)
    runner.train()
    expected = merge_peft_weights(converted, adapter)['state_dict']
    _assert_state_equals(runner.model, expected)
    _assert_state_equals(runner.model, trained['state_dict'])  # the trained model again
    base = load_checkpoint_file(converted)['blocks.2.attn.q.weight']
    assert not torch.equal(runner.model.backbone.blocks[2].attn.q.base_layer.weight, base)
