"""Hooks, annealed weight decay, EMA checkpoints and exact resume, in real Runner runs."""
import copy
import json
import math
import os.path as osp

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner

import soma  # noqa: F401
from soma.apis.demo import demo_config
from soma.datasets import make_synthetic_dg_benchmark
from soma.engine.loops import _ResumableBatchSampler
from soma.utils.checkpoint_io import CheckpointError, load_checkpoint_file

SIZE = 64
FCN_HEAD = dict(type='FCNHead', in_channels=64, in_index=3, channels=16, num_convs=1,
                concat_input=False, dropout_ratio=0.1, num_classes=19,
                norm_cfg=dict(type='GN', num_groups=4), align_corners=False,
                loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0))


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('synthetic_seg_engine')
    make_synthetic_dg_benchmark(root, num_train=6, num_val=1, size=(SIZE, SIZE))
    return str(root)


def tiny_cfg(data_root, work_dir, iters, head='fcn', seed=0):
    cfg = demo_config(data_root, work_dir, iters, val=False, image_size=SIZE)
    if head == 'fcn':
        cfg.model.decode_head = copy.deepcopy(FCN_HEAD)
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.interval = 1
    cfg.default_hooks.checkpoint.max_keep_ckpts = 10
    cfg.custom_hooks = [dict(type='WeightDecayLoggingHook', interval=1),
                        dict(type='SoMAMetaHook')]
    cfg.randomness = dict(seed=seed)
    return cfg


class _WeightDecayProbe(Hook):
    priority = 'VERY_LOW'

    def __init__(self):
        self.history = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.history.append([(g['initial_weight_decay'], g['weight_decay'])
                             for g in runner.optim_wrapper.optimizer.param_groups])


def test_weight_decay_follows_the_cosine_per_group_and_is_logged(data_root, tmp_path):
    iters = 4
    cfg = tiny_cfg(data_root, str(tmp_path), iters)
    probe = _WeightDecayProbe()
    runner = Runner.from_cfg(cfg)
    runner.register_hook(probe)
    runner.train()
    starts = {wd0 for wd0, _ in probe.history[0]}
    assert starts == {0.0, 0.05}  # norms/queries/embeddings decay x0, the rest 0.05
    for t, groups in enumerate(probe.history):
        for wd0, wd in groups:
            cos = 0.5 * (1 + math.cos(math.pi * t / iters))
            want = 0.0 if wd0 == 0 else 1e-5 + (wd0 - 1e-5) * cos
            assert wd == pytest.approx(want, abs=1e-12)
    # the logging hook puts every distinct group into the scalars (json log / TensorBoard)
    scalars = osp.join(cfg.work_dir, runner.timestamp, 'vis_data', 'scalars.json')
    records = [json.loads(line) for line in open(scalars)]
    assert all('iter' in r for r in records)  # training only, no validation
    assert records[-1]['weight_decay/init_0'] == 0
    last = [wd for wd0, wd in probe.history[-1] if wd0 == 0.05][0]
    assert records[-1]['weight_decay/init_0.05'] == pytest.approx(last)
    assert records[-1]['weight_decay'] == pytest.approx(last)
    assert records[0]['weight_decay'] == pytest.approx(0.05)


def test_ema_checkpoint_layout_and_soma_meta(data_root, tmp_path):
    cfg = tiny_cfg(data_root, str(tmp_path), 2)
    cfg.custom_hooks.append(dict(type='EMAHook', begin_iter=1, priority='NORMAL'))
    Runner.from_cfg(cfg).train()
    ckpt = load_checkpoint_file(osp.join(cfg.work_dir, 'iter_2.pth'))
    ema = ckpt['ema_state_dict']
    assert 'steps' in ema
    model_keys = {k for k in ema if k != 'steps'}
    assert all(k.startswith('module.') for k in model_keys)
    assert {k[len('module.'):] for k in model_keys} == set(ckpt['state_dict'])
    assert 'module.backbone.model.blocks.2.attn.q.lora_A.weight' in ema
    assert ckpt['meta']['soma']['semantics'] == 'residual'


def _state(path):
    return load_checkpoint_file(path)['state_dict']


def test_resume_reproduces_the_uninterrupted_run(data_root, tmp_path):
    """Interrupted at k, resumed to n == trained to n in one go (bit for bit on the CPU).

    The config draws a random seed (``seed=None``), as mmseg's defaults do: the resumed run
    must continue with the seed of the interrupted one (restored from the checkpoint), for
    the sampler order, the augmentations and the model's own randomness (FCN dropout).
    """
    n, k = 4, 2
    part = tiny_cfg(data_root, str(tmp_path / 'part'), n, seed=None)
    part.train_cfg.max_iters = k  # interrupted after k iterations (schedules still end at n)
    Runner.from_cfg(part).train()
    seed = load_checkpoint_file(osp.join(part.work_dir, f'iter_{k}.pth'))['meta']['seed']
    full = tiny_cfg(data_root, str(tmp_path / 'full'), n, seed=seed)
    Runner.from_cfg(full).train()
    resumed = tiny_cfg(data_root, str(tmp_path / 'part'), n, seed=None)
    resumed.resume = True
    Runner.from_cfg(resumed).train()
    a = _state(osp.join(full.work_dir, f'iter_{n}.pth'))
    b = _state(osp.join(part.work_dir, f'iter_{n}.pth'))
    assert set(a) == set(b)
    assert all(torch.equal(a[key], b[key]) for key in a), [
        key for key in a if not torch.equal(a[key], b[key])][:5]
    c = _state(osp.join(part.work_dir, f'iter_{k}.pth'))
    assert any(not torch.equal(b[key], c[key]) for key in b)  # it did train after resuming


def test_resumable_batch_sampler_skips_indices_only():
    from mmengine.dataset import InfiniteSampler
    from torch.utils.data import BatchSampler
    dataset = list(range(10))
    ref = _ResumableBatchSampler(BatchSampler(InfiniteSampler(dataset, seed=1), 3, False), 7, 0)
    it = iter(ref)
    batches = [next(it) for _ in range(5)]
    skipping = _ResumableBatchSampler(BatchSampler(InfiniteSampler(dataset, seed=1), 3, False),
                                      7, 0)
    skipping.skip = 3
    it = iter(skipping)
    assert [next(it) for _ in range(2)] == batches[3:]
    # items are (seed, index): the seed depends on (seed, rank, batch, position) only
    assert len({s for batch in batches for s, _ in batch}) == 15


def test_load_backbone_hook(data_root, tmp_path):
    from soma.models.backbones.dinov2 import DinoVisionTransformer
    torch.manual_seed(5)
    src = DinoVisionTransformer(img_size=SIZE, patch_size=16, embed_dim=64, depth=4, num_heads=2,
                                init_values=1.0, out_indices=[0, 1, 2, 3])
    path = str(tmp_path / 'converted.pth')
    torch.save(src.state_dict(), path)
    cfg = tiny_cfg(data_root, str(tmp_path / 'work'), 1)
    cfg.custom_hooks.append(dict(type='LoadBackboneHook', checkpoint_path=path))
    cfg.optim_wrapper.optimizer.lr = 0.0  # nothing moves: compare with the file afterwards
    runner = Runner.from_cfg(cfg)
    runner.train()
    backbone = runner.model.backbone.model
    torch.testing.assert_close(backbone.blocks[0].attn.q.weight, src.blocks[0].attn.q.weight)
    layer, ref = backbone.blocks[3].mlp.fc2, src.blocks[3].mlp.fc2.weight
    s = layer.scaling if hasattr(layer, 'scaling') else 1.0
    torch.testing.assert_close(layer.weight + s * layer.lora_B.weight @ layer.lora_A.weight, ref,
                               rtol=0, atol=1e-5)
    # a backbone of another architecture: a one-line error naming the file and the key
    other = DinoVisionTransformer(img_size=SIZE, patch_size=16, embed_dim=32, depth=4,
                                  num_heads=2, out_indices=[0, 1, 2, 3])
    bad = str(tmp_path / 'other.pth')
    torch.save(other.state_dict(), bad)
    cfg = tiny_cfg(data_root, str(tmp_path / 'work2'), 1)
    cfg.custom_hooks.append(dict(type='LoadBackboneHook', checkpoint_path=bad))
    with pytest.raises(CheckpointError, match=r'other.pth: .* has shape'):
        Runner.from_cfg(cfg).train()
