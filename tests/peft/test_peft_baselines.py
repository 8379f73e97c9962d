"""peft adapters through the seam (soma.models.peft_backbone), and SoMA's random components.

References are independent: ``peft`` itself on the bare backbone (trainable counts, its
own PiSSA/OLoRA/MiCA init run by hand on the pretrained weights), a float64 SVD.
"""
import copy
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook

import soma  # noqa: F401
from soma.models.backbones.dinov2 import DinoVisionTransformer
from soma.models.peft_backbone import (init_soma_after_weights, merge_and_unload_backbone,
                                       refreeze_soma, trainable_parameter_report,
                                       wrap_backbone)

TARGETS = ['q', 'k', 'v', 'proj', 'fc1', 'fc2']
VIT = dict(img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=2, init_values=1.0,
           out_indices=[0, 1, 2, 3])


def lora(**kw):
    cfg = dict(type='LoraConfig', r=4, lora_alpha=8, target_modules=TARGETS, start_lora_idx=2)
    cfg.update(kw)
    return cfg


@pytest.fixture(scope='module')
def pretrained():
    torch.manual_seed(3)
    return DinoVisionTransformer(**VIT).state_dict()


def adapted(peft_cfg, pretrained):
    """A backbone adapted through the seam, the pretrained weights loaded as
    ``LoadBackboneHook`` loads them (plain keys), then initialised after the weights."""
    torch.manual_seed(11)
    backbone = wrap_backbone(DinoVisionTransformer(**VIT, peft_cfg=peft_cfg))
    missing = backbone.load_state_dict(pretrained, strict=False).missing_keys
    assert all('lora_' in k for k in missing)
    backbone.is_init = True
    init_soma_after_weights(backbone)
    return backbone


def bare_peft_model(peft_cfg, pretrained):
    """peft's own model on the bare pretrained backbone (layers_to_transform given)."""
    from peft import LoraConfig, get_peft_model
    cfg = dict(peft_cfg)
    cfg.pop('type')
    start = cfg.pop('start_lora_idx')
    bare = DinoVisionTransformer(**VIT)
    bare.load_state_dict(pretrained)
    config = LoraConfig(layers_to_transform=list(range(start, VIT['depth'])),
                        layers_pattern='blocks', **cfg)
    return get_peft_model(bare, config)


@pytest.mark.parametrize('kw', [dict(), dict(use_dora=True), dict(init_lora_weights='mica'),
                                dict(bias='lora_only'), dict(r=2, start_lora_idx=0)])
def test_trainable_count_equals_peft(kw, pretrained):
    backbone = adapted(lora(**kw), pretrained)
    backbone.train()
    refreeze_soma(backbone)
    ours = trainable_parameter_report(backbone)
    theirs, total = bare_peft_model(lora(**kw), pretrained).get_nb_trainable_parameters()
    assert ours['trainable'] == theirs
    assert ours['total'] == total
    start = lora(**kw)['start_lora_idx']
    assert all(ours['per_block'][i][0] == 0 for i in range(start))


@pytest.mark.parametrize('init', ['pissa', 'olora', 'mica', 'pissa_niter_4'])
def test_svd_inits_run_on_the_loaded_weights(init, pretrained):
    backbone = adapted(lora(init_lora_weights=init), pretrained)
    reference = bare_peft_model(lora(init_lora_weights=init), pretrained)
    ours, theirs = backbone.state_dict(), reference.base_model.model.state_dict()
    for name in ('blocks.2.attn.q', 'blocks.3.mlp.fc1'):
        for part in ('lora_A', 'lora_B'):
            key = f'{name}.{part}.default.weight'
            if init == 'pissa_niter_4':  # randomised: compare the product below
                continue
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6)
        a, b = ours[f'{name}.lora_A.default.weight'], ours[f'{name}.lora_B.default.weight']
        # the base weight as stored + s * B @ A is the pretrained weight
        restored = ours[f'{name}.weight'].double() + 2.0 * (b.double() @ a.double())
        torch.testing.assert_close(restored, pretrained[f'{name}.weight'].double(),
                                   rtol=0, atol=1e-5)
    if init in ('pissa', 'mica'):  # against a float64 SVD of the pretrained weight
        w = pretrained['blocks.2.attn.q.weight'].double()
        u, s, vh = torch.linalg.svd(w)
        b = ours['blocks.2.attn.q.lora_B.default.weight'].double()
        cols = u[:, :4] if init == 'pissa' else u[:, -4:]
        # same subspace of left singular vectors
        torch.testing.assert_close(cols @ (cols.T @ b), b, rtol=0, atol=1e-5)


def test_dora_magnitude_from_the_loaded_weights(pretrained):
    backbone = adapted(lora(use_dora=True), pretrained)
    mag = backbone.state_dict()['blocks.2.mlp.fc2.lora_magnitude_vector.default.weight']
    torch.testing.assert_close(mag, pretrained['blocks.2.mlp.fc2.weight'].norm(dim=1))
    x = torch.randn(2, 3, 64, 64)
    plain = DinoVisionTransformer(**VIT)
    plain.load_state_dict(pretrained)
    for y, z in zip(backbone.eval()(x), plain.eval()(x)):
        torch.testing.assert_close(y, z, rtol=1e-4, atol=1e-5)


def test_checkpoint_roundtrip_keeps_adapters_and_keys(pretrained):
    backbone = adapted(lora(init_lora_weights='pissa'), pretrained)
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if 'lora_' in name:
                p.add_(0.01 * torch.randn_like(p))
    state = backbone.state_dict()
    assert 'blocks.2.attn.q.weight' in state and 'blocks.2.attn.q.lora_A.default.weight' in state
    assert not any('base_layer' in k for k in state)
    again = wrap_backbone(DinoVisionTransformer(**VIT, peft_cfg=lora(init_lora_weights='pissa')))
    result = again.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    again.is_init = True
    init_soma_after_weights(again)  # adapter keys were loaded: no re-init
    for key, value in again.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


@pytest.mark.parametrize('kw', [dict(), dict(use_dora=True), dict(init_lora_weights='pissa')])
def test_merged_outputs_equal_unmerged(kw, pretrained):
    backbone = adapted(lora(**kw), pretrained)
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if 'lora_' in name:
                p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 3, 64, 64)
    unmerged = backbone.eval()(x)
    plain = merge_and_unload_backbone(copy.deepcopy(backbone))
    assert type(plain) is DinoVisionTransformer
    assert not any('lora' in k for k in plain.state_dict())
    assert set(plain.state_dict()) == set(pretrained)
    for y, z in zip(plain(x), unmerged):
        torch.testing.assert_close(y, z, rtol=1e-4, atol=1e-5)


def test_hf_backbone_gets_peft_adapters():
    from soma.models.backbones.hf_vision import HFVisionBackbone
    model = dict(model_type='dinov2', hidden_size=32, num_hidden_layers=4,
                 num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
    try:
        backbone = HFVisionBackbone(model=model, out_indices=(0, 1, 2, 3),
                                    peft_cfg=dict(type='LoraConfig', r=2, lora_alpha=2,
                                                  init_lora_weights='pissa'))
    except TypeError as exc:  # transformers without this family
        pytest.skip(str(exc))
    backbone = wrap_backbone(backbone)
    init_soma_after_weights(backbone)
    layers = [n for n, _ in backbone.named_modules() if n.endswith('.lora_A')]
    # default start block: depth // 3 = 1, as for SoMA's lora_cfg on this backbone
    assert layers and all('.layer.0.' not in n for n in layers)
    report = trainable_parameter_report(backbone)
    assert report['trainable'] > 0 and report['per_block'][0][0] == 0
    x = torch.randn(1, 3, 32, 32)
    assert [tuple(y.shape[1:2]) for y in backbone(x)] == [(32,)] * 4


@pytest.mark.parametrize('cfg, message', [
    (dict(type='NoSuchConfig', r=4), "type 'NoSuchConfig' is not a peft config class"),
    (lora(init_lora_weights='eva'), 'data-driven'),
    (lora(init_lora_weights='corda'), 'data-driven'),
    (lora(init_lora_weights='bogus'), 'peft_cfg (LoraConfig)'),
    (lora(start_lora_idx=9), 'start_lora_idx=9 must be in 0..3'),
    (lora(nope=1), "unknown LoraConfig key(s) ['nope']"),
    (lora(target_modules=['nothing_like_this']), 'peft_cfg (LoraConfig) on DinoVisionTransformer'),
])
def test_bad_peft_cfg_is_a_one_line_error(cfg, message):
    with pytest.raises(ValueError) as info:
        wrap_backbone(DinoVisionTransformer(**VIT, peft_cfg=cfg))
    assert message in str(info.value) and '\n' not in str(info.value)


def test_lora_cfg_and_peft_cfg_together_are_refused():
    with pytest.raises(ValueError, match='both lora_cfg and peft_cfg'):
        wrap_backbone(DinoVisionTransformer(**VIT, lora_cfg=dict(r=2), peft_cfg=lora()))


# ------------------------------------------------------------------ SoMA random components
def test_random_components_match_a_float64_reference():
    from soma.peft import SoMALinear
    from soma.peft.svd import random_component_indices
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 40)
    w0 = linear.weight.detach().double().clone()
    layer = SoMALinear.from_linear(linear, r=5, lora_alpha=10, lora_weight_init='soma_random')
    layer.init_adapter()
    u, s, vh = torch.linalg.svd(w0, full_matrices=False)
    idx = torch.randperm(24, generator=torch.Generator().manual_seed(0))[:5].sort().values
    assert torch.equal(random_component_indices(24, 5, 0), idx)
    part = u[:, idx] @ torch.diag(s[idx]) @ vh[idx]
    delta = 2.0 * layer.lora_B.weight.double() @ layer.lora_A.weight.double()
    assert torch.linalg.norm(delta - part) / torch.linalg.norm(part) < 1e-5
    torch.testing.assert_close(layer.weight.double(), w0 - part, rtol=0, atol=1e-5)
    # neither the minor nor the principal components (for this seed)
    assert idx.tolist() != list(range(19, 24)) and idx.tolist() != list(range(5))


def test_random_components_config_rules():
    from soma.peft import SoMAConfig
    assert SoMAConfig(lora_weight_init='sora_random').niter is None
    with pytest.raises(ValueError, match='first_eigen=True contradicts'):
        SoMAConfig(lora_weight_init='sora_random', first_eigen=True)
    with pytest.raises(ValueError, match="'sora_random'"):
        SoMAConfig(lora_weight_init='random')


# ------------------------------------------------------------------ a real Runner, each method
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
METHODS = {
    'lora': dict(peft_cfg=lora(r=2, lora_alpha=2), lora_cfg=None),
    'dora': dict(peft_cfg=lora(r=2, lora_alpha=2, use_dora=True), lora_cfg=None),
    'pissa': dict(peft_cfg=lora(r=2, lora_alpha=2, init_lora_weights='pissa'), lora_cfg=None),
    'mica': dict(peft_cfg=lora(r=2, lora_alpha=2, init_lora_weights='mica'), lora_cfg=None),
    'milora': dict(lora_cfg=dict(type='sora', r=2, lora_alpha=2, start_lora_idx=0)),
    'random': dict(lora_cfg=dict(type='sora', r=2, lora_alpha=2, start_lora_idx=2,
                                 lora_weight_init='sora_random')),
}


class _Snapshot(Hook):
    """Keeps the backbone's parameters as training starts (after the init)."""

    def before_train(self, runner):
        self.before = {n: p.detach().clone()
                       for n, p in runner.model.backbone.named_parameters()}


@pytest.mark.parametrize('method', sorted(METHODS))
def test_a_few_iterations_with_a_real_runner(method, tmp_path, pretrained):
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner
    from soma.datasets import make_synthetic_dg_benchmark
    data = tmp_path / 'data'
    make_synthetic_dg_benchmark(data, num_train=2, num_val=1, size=(64, 64))
    ckpt = tmp_path / 'pretrained.pth'
    torch.save(pretrained, ckpt)
    cfg = Config.fromfile(osp.join(REPO, 'tests', 'tools', 'tiny_seg_config.py'))
    cfg.model.backbone.update(embed_dim=32, init_values=1.0, **METHODS[method],
                              init_cfg=dict(type='Pretrained', checkpoint=str(ckpt)))
    cfg.model.decode_head.in_channels = 32
    cfg.model.decode_head.norm_cfg = dict(type='GN', num_groups=4)
    root = str(data / 'gta')
    cfg.train_dataloader = dict(
        batch_size=1, num_workers=0, sampler=dict(type='InfiniteSampler', shuffle=False),
        dataset=dict(type='CityscapesDataset', data_root=root,
                     data_prefix=dict(img_path='images', seg_map_path='labels'),
                     img_suffix='.png', seg_map_suffix='_labelTrainIds.png',
                     pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                               dict(type='PackSegInputs')]))
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=3)
    cfg.optim_wrapper = dict(
        constructor='PEFTOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
        paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.5, decay_mult=1.0),
                                        'norm': dict(decay_mult=0.0)}))
    cfg.param_scheduler = [dict(type='CosineAnnealingParamScheduler', param_name='weight_decay',
                                eta_min=1e-5, begin=0, end=3, by_epoch=False)]
    cfg.default_hooks = dict(logger=dict(type='LoggerHook', interval=1))
    cfg.work_dir = str(tmp_path / 'work')
    cfg.log_level = 'WARNING'
    with DefaultScope.overwrite_default_scope('mmseg'):
        runner = Runner.from_cfg(cfg)
        backbone = runner.model.backbone
        snapshot = _Snapshot()
        runner.register_hook(snapshot, priority='LOWEST')
        runner.train()
    before = snapshot.before
    trained = {n for n, p in backbone.named_parameters() if not torch.equal(p, before[n])}
    optimised = {id(p): g for g in runner.optim_wrapper.optimizer.param_groups
                 for p in g['params']}
    names = {n: p for n, p in backbone.named_parameters()}
    assert trained and all('lora' in n or n.endswith('.bias') for n in trained)
    for name in trained:
        assert optimised[id(names[name])]['lr'] == pytest.approx(0.5e-3)  # backbone x0.5
        assert 'norm' not in name
        assert not any(f'blocks.{i}.' in name for i in range(
            0 if method == 'milora' else 2))
    # the weight decay was annealed in each group (0 stays 0)
    assert all(g['weight_decay'] <= g['initial_weight_decay']
               for g in runner.optim_wrapper.optimizer.param_groups)
    if method in ('pissa', 'random'):  # initialised on the loaded (pretrained) weights
        # peft: blocks.2.attn.q.base_layer / lora_A.default; SoMA: model.blocks.2.attn.q
        layer = 'blocks.2.attn.q' if method == 'pissa' else 'model.blocks.2.attn.q'
        infix = '.default' if method == 'pissa' else ''
        name = layer + ('.base_layer' if method == 'pissa' else '')
        a = before[f'{layer}.lora_A{infix}.weight'].double()
        b = before[f'{layer}.lora_B{infix}.weight'].double()
        assert b.abs().sum() > 0
        torch.testing.assert_close(before[f'{name}.weight'].double() + b @ a,
                                   pretrained['blocks.2.attn.q.weight'].double(),
                                   rtol=0, atol=1e-5)
    if method == 'mica':  # peft's MiCA keeps B frozen
        assert not any('lora_B' in n for n in trained)


def test_detector_gets_peft_adapters_through_the_seam():
    """PEFTBackboneCoDETR asks the same seam: a DoRA backbone trains, one loss step."""
    import importlib.util
    from mmengine.registry import DefaultScope
    from soma.registry import DET_MODELS
    spec = importlib.util.spec_from_file_location(
        '_co_detr_helpers', osp.join(REPO, 'tests', 'models', 'test_co_detr.py'))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    cfg = helpers.tiny_cfg('PEFTBackboneCoDETR')
    cfg.backbone.lora_cfg = None
    cfg.backbone.peft_cfg = lora(r=2, lora_alpha=2, use_dora=True)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = DET_MODELS.build(cfg)
        model.init_weights()
        model.train()
        losses = helpers.loss_of(model, helpers.make_batch())
    parsed, _ = model.parse_losses(losses)
    parsed.backward()
    trained = {n for n, p in model.backbone.named_parameters() if p.grad is not None}
    assert trained and all('lora_' in n for n in trained)
    assert any('lora_magnitude_vector' in n for n in trained)
    assert not any(f'blocks.{i}.' in n for n in trained for i in (0, 1))
