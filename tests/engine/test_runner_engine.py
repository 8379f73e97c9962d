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
from soma.engine.loops import ResumableBatchSampler
from soma.utils.checkpoint_io import CheckpointError, load_checkpoint_file
from conftest import TINY_FCN_HEAD  # noqa: E402

SIZE = 64
FCN_HEAD = dict(TINY_FCN_HEAD, dropout_ratio=0.1)


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
    ref = ResumableBatchSampler(BatchSampler(InfiniteSampler(dataset, seed=1), 3, False), 7, 0)
    it = iter(ref)
    batches = [next(it) for _ in range(5)]
    skipping = ResumableBatchSampler(BatchSampler(InfiniteSampler(dataset, seed=1), 3, False),
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


# ------------------------------------------------------------------ LoadBackboneHook + loading
def _converted_file(tmp_path, seed=5):
    from soma.models.backbones.dinov2 import DinoVisionTransformer
    torch.manual_seed(seed)
    src = DinoVisionTransformer(img_size=SIZE, patch_size=16, embed_dim=64, depth=4, num_heads=2,
                                init_values=1.0, out_indices=[0, 1, 2, 3])
    path = str(tmp_path / 'converted.pth')
    torch.save(src.state_dict(), path)
    return path, {k: v.detach().clone() for k, v in src.state_dict().items()}


def _released_adapter_file(cfg, path):
    """A released adapter checkpoint (no meta): trained-looking lora, biases, head, + EMA."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from soma.checkpoints import is_adapter_key
    init_default_scope('mmseg')
    g = torch.Generator().manual_seed(3)
    sd = {k: v + 0.1 * torch.randn(v.shape, generator=g)
          for k, v in MODELS.build(copy.deepcopy(cfg.model)).state_dict().items()
          if v.is_floating_point() and (k.startswith('decode_head.')
                                        or is_adapter_key(k, adapted_blocks={2, 3}))}
    ema = {f'module.{k}': v + 0.01 for k, v in sd.items()}
    ema['steps'] = torch.tensor(3)
    torch.save({'state_dict': sd, 'ema_state_dict': ema}, path)
    return path


def _hook_cfg(data_root, work, converted, iters=1, load_from=None, lr=0.0):
    cfg = tiny_cfg(data_root, work, iters)
    cfg.custom_hooks.append(dict(type='LoadBackboneHook', checkpoint_path=converted))
    cfg.optim_wrapper.optimizer.lr = lr  # 0: nothing moves, compare with the files afterwards
    cfg.load_from = load_from
    return cfg


def _assert_state_equals(model, expected):
    state = model.state_dict()
    assert set(expected) == set(state)
    different = [k for k, v in expected.items() if not torch.equal(state[k], v)]
    assert not different, different[:3]


def test_load_backbone_hook_with_a_released_adapter_then_resume(data_root, tmp_path):
    from soma.checkpoints import merge_soma_weights
    converted, src = _converted_file(tmp_path)
    work = str(tmp_path / 'release')
    cfg = _hook_cfg(data_root, work, converted)
    adapter = _released_adapter_file(cfg, str(tmp_path / 'released_adapter.pth'))
    cfg.load_from = adapter
    cfg.custom_hooks.append(dict(type='EMAHook', begin_iter=1, priority='NORMAL'))
    runner = Runner.from_cfg(cfg)
    runner.train()
    # the model is W_pretrained + s*B@A: the released model, as merge_soma_weights builds it
    _assert_state_equals(runner.model, merge_soma_weights(converted, adapter)['state_dict'])
    layer = runner.model.backbone.model.blocks[3].mlp.fc2
    released = load_checkpoint_file(adapter)['state_dict']
    b = released['backbone.model.blocks.3.mlp.fc2.lora_B.weight']
    a = released['backbone.model.blocks.3.mlp.fc2.lora_A.weight']
    by_hand = src['blocks.3.mlp.fc2.weight'].double() + layer.scaling * b.double() @ a.double()
    torch.testing.assert_close(layer.to_linear().weight.double(), by_hand, rtol=0, atol=1e-6)
    ema_hook = [h for h in runner.hooks if hasattr(h, 'ema_model')][0]
    ema_backbone = ema_hook.ema_model.module.backbone
    assert runner.model.backbone.semantics == ema_backbone.semantics == 'release'
    assert torch.equal(ema_backbone.model.blocks[3].mlp.fc2.weight,
                       src['blocks.3.mlp.fc2.weight'])
    ckpt = load_checkpoint_file(osp.join(work, 'iter_1.pth'))
    assert ckpt['meta']['soma']['semantics'] == 'release'

    # hook + resume: the checkpoint wins over the hook's before_run, semantics stay 'release'
    cfg = _hook_cfg(data_root, work, converted, iters=2)
    cfg.resume = True
    runner = Runner.from_cfg(cfg)
    runner.train()
    _assert_state_equals(runner.model, ckpt['state_dict'])
    assert runner.model.backbone.semantics == 'release'
    assert load_checkpoint_file(osp.join(work, 'iter_2.pth'))['meta']['soma'][
        'semantics'] == 'release'


def test_load_backbone_hook_rebuilds_w_res_for_a_residual_adapter(data_root, tmp_path):
    from soma.checkpoints import extract_soma_weights, merge_soma_weights
    converted, src = _converted_file(tmp_path)
    # a SoMA run from the converted backbone (hook alone: residual), one real step
    first = _hook_cfg(data_root, str(tmp_path / 'first'), converted, lr=1e-3)
    Runner.from_cfg(first).train()
    trained = load_checkpoint_file(osp.join(first.work_dir, 'iter_1.pth'))
    assert trained['meta']['soma']['semantics'] == 'residual'
    adapter = str(tmp_path / 'residual_adapter.pth')
    torch.save(extract_soma_weights(trained), adapter)
    # hook + load_from the adapter-only checkpoint: exactly the trained model again (W_res)
    cfg = _hook_cfg(data_root, str(tmp_path / 'second'), converted, load_from=adapter)
    runner = Runner.from_cfg(cfg)
    runner.train()
    _assert_state_equals(runner.model, trained['state_dict'])
    _assert_state_equals(runner.model, merge_soma_weights(converted, adapter)['state_dict'])
    q = runner.model.backbone.model.blocks[2].attn.q
    assert not torch.equal(q.weight, src['blocks.2.attn.q.weight'])  # W_res, not W_pre
    assert runner.model.backbone.semantics == 'residual'


def test_a_released_adapter_without_backbone_weights_is_refused(data_root, tmp_path):
    cfg = tiny_cfg(data_root, str(tmp_path / 'work'), 1)
    cfg.load_from = _released_adapter_file(cfg, str(tmp_path / 'released_adapter.pth'))
    with pytest.raises(CheckpointError, match="'release' semantics but no backbone weights"):
        Runner.from_cfg(cfg).train()
