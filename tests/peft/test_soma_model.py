"""soma.peft.model: name rules, freezing, state-dict layout and init order on real models."""
import logging
import math
import warnings

import pytest
import torch
from torch import nn

from soma.models.backbones.dinov2 import DinoVisionTransformer
from soma.peft import (ALWAYS_FROZEN_KEYWORDS, SoMAConfig, SoMALinear, SoMAModel, SoraConfig,
                       SoraModel, apply_soma)
from soma.peft import layer as layer_mod

TINY = dict(img_size=32, patch_size=16, embed_dim=32, depth=4, num_heads=2,
            out_indices=(0, 1, 2, 3), init_values=1.0)
TARGETS = ('attn.q', 'attn.k', 'attn.v', 'attn.proj', 'mlp.fc1', 'mlp.fc2')


def _vit(seed=0, **kw):
    torch.manual_seed(seed)
    return DinoVisionTransformer(**{**TINY, **kw})


def _cfg(**kw):
    return SoMAConfig(**{'r': 4, 'start_lora_idx': 2, **kw})


def _x(seed=0):
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _close(outs, refs, tol=1e-5):
    for a, b in zip(outs, refs):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=tol, atol=tol)


def test_outputs_unchanged_at_init_and_layers_chosen():
    vit = _vit()
    with torch.no_grad():
        ref = vit(_x())
    model = SoMAModel(_cfg(), vit)
    layers = model.adapted_layers()
    assert sorted(layers) == sorted(f'blocks.{i}.{t}' for i in (2, 3) for t in TARGETS)
    assert not isinstance(vit.patch_embed.proj, SoMALinear)  # 'proj' outside blocks
    assert all(m.lora_initialized for m in layers.values())
    with torch.no_grad():
        _close(model(_x()), ref)


def test_state_dict_keys_follow_the_release_layout():
    class Segmentor(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = SoMAModel(_cfg(), _vit())

    sd = Segmentor().state_dict()
    d = TINY['embed_dim']
    assert sd['backbone.model.blocks.2.attn.q.lora_A.weight'].shape == (4, d)
    assert sd['backbone.model.blocks.2.attn.q.lora_B.weight'].shape == (d, 4)
    assert sd['backbone.model.blocks.3.mlp.fc1.lora_A.weight'].shape == (4, d)
    assert sd['backbone.model.blocks.3.mlp.fc1.lora_B.weight'].shape == (4 * d, 4)
    assert sd['backbone.model.blocks.3.mlp.fc2.lora_A.weight'].shape == (4, 4 * d)
    assert 'backbone.model.blocks.2.attn.q.weight' in sd
    assert 'backbone.model.mask_token' in sd
    assert not any('lora' in k for k in sd if k.startswith('backbone.model.blocks.1.'))
    lora = [k for k in sd if 'lora' in k]
    assert len(lora) == 2 * 2 * len(TARGETS)


def _trainable(model):
    return {n for n, p in model.model.named_parameters() if p.requires_grad}


def _expected_trainable(bias):
    names = {'mask_token'}
    for i in (2, 3):
        for t in TARGETS:
            names |= {f'blocks.{i}.{t}.lora_A.weight', f'blocks.{i}.{t}.lora_B.weight'}
            if bias != 'none':
                names.add(f'blocks.{i}.{t}.bias')
    return names


@pytest.mark.parametrize('bias', ['all', 'lora_only', 'none'])
def test_trainable_and_frozen_sets(bias):
    model = SoMAModel(_cfg(bias=bias), _vit())
    assert _trainable(model) == _expected_trainable(bias)


def test_train_reapplies_freezing():
    model = SoMAModel(_cfg(), _vit())
    for name, p in model.model.named_parameters():
        p.requires_grad_(True)
    model.train()
    assert _trainable(model) == _expected_trainable('all')
    frozen = [n for n in _trainable(model) if any(k in n for k in ALWAYS_FROZEN_KEYWORDS)]
    assert not frozen


def test_gradients_reach_only_trainable_parameters_and_early_blocks_build_no_graph():
    model = SoMAModel(_cfg(), _vit())
    grad_flags = {}
    for i, blk in enumerate(model.model.blocks):
        blk.register_forward_hook(
            lambda m, a, out, i=i: grad_flags.__setitem__(i, out.requires_grad))
    outs = model(_x())
    assert grad_flags == {0: False, 1: False, 2: True, 3: True}  # frozen blocks: no graph
    sum(o.square().mean() for o in outs).backward()
    with_grad = {n for n, p in model.model.named_parameters() if p.grad is not None}
    assert with_grad == _expected_trainable('all') - {'mask_token'}  # mask token unused here


def test_rank_ramp_ranks():
    vit = _vit(depth=24, out_indices=(7, 11, 15, 23))
    model = SoMAModel(_cfg(r=2, start_lora_idx=8, rank_ramp=True), vit, init_adapters=False)
    ranks = {int(n.split('.')[1]): m.r for n, m in model.adapted_layers().items()}
    assert ranks == {**{i: 2 for i in range(8, 12)}, **{i: 4 for i in range(12, 16)},
                     **{i: 8 for i in range(16, 20)}, **{i: 16 for i in range(20, 24)}}


def test_regex_versus_suffix_targets():
    regex = SoMAModel(_cfg(target_modules=r'blocks\.\d+\.attn\.(q|v)'), _vit(),
                      init_adapters=False)
    assert sorted(regex.adapted_layers()) == [f'blocks.{i}.attn.{t}' for i in (2, 3)
                                              for t in 'qv']
    suffix = SoMAModel(_cfg(target_modules=['q', 'fc2']), _vit(), init_adapters=False)
    assert sorted(suffix.adapted_layers()) == [f'blocks.{i}.{t}' for i in (2, 3)
                                               for t in ('attn.q', 'mlp.fc2')]


def test_vit_large_trainable_count_on_meta_device():
    with torch.device('meta'):  # shapes only: no memory, no SVD
        vit = DinoVisionTransformer(arch='large', drop_path_uniform=True)
    model = SoMAModel(SoMAConfig(), vit, init_adapters=False)
    report = model.trainable_parameter_report()
    assert report['trainable'] == 4_867_072
    assert all(report['per_block'][i][0] == 294_912 + 9_216 for i in range(8, 24))
    assert all(report['per_block'][i][0] == 0 for i in range(8))
    assert report['non_block'][0] == 1_024  # mask token
    assert '4,867,072' in report['table']


def test_report_is_logged_when_built(caplog):
    with caplog.at_level(logging.INFO, logger='soma.peft.model'):
        SoMAModel(_cfg(), _vit())
    assert 'SoMA trainable parameters' in caplog.text and 'initialised 12 layer' in caplog.text


def _count_svd(monkeypatch):
    calls = []
    real = layer_mod.components64
    monkeypatch.setattr(layer_mod, 'components64',
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_plain_backbone_state_dict_runs_svd_once_and_lora_keys_none(monkeypatch):
    calls = _count_svd(monkeypatch)
    pretrained = _vit(seed=1)
    plain_sd = pretrained.state_dict()
    with torch.no_grad():
        ref = pretrained(_x())
    model = SoMAModel(_cfg(), _vit(seed=2), init_adapters=False)
    assert not calls
    result = model.model.load_state_dict(plain_sd, strict=True)  # no missing lora keys
    assert not result.missing_keys and len(calls) == 12
    assert model.init_adapters() == 0 and len(calls) == 12  # never twice
    with torch.no_grad():
        _close(model(_x()), ref)
    soma_sd = model.state_dict()
    fresh = SoMAModel(_cfg(), _vit(seed=3), init_adapters=False)
    fresh.load_state_dict(soma_sd, strict=True)
    assert len(calls) == 12 and fresh.init_adapters() == 0
    with torch.no_grad():
        _close(fresh(_x()), ref)


def test_mmengine_pretrained_init_cfg_then_pending_layers(tmp_path, monkeypatch):
    """The segmentor's order: wrap (no SVD), init_weights loads the checkpoint -> SVD of it."""
    calls = _count_svd(monkeypatch)
    pretrained = _vit(seed=4)
    path = tmp_path / 'dinov2_converted.pth'
    torch.save(pretrained.state_dict(), path)
    with torch.no_grad():
        ref = pretrained(_x())
    vit = _vit(seed=5, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model = SoMAModel(_cfg(), vit, init_adapters=False)
    model.model.init_weights()
    assert len(calls) == 12 and model.init_adapters() == 0
    with torch.no_grad():
        _close(model(_x()), ref)
    q = model.model.blocks[2].attn.q
    w_pre = pretrained.blocks[2].attn.q.weight.detach().double()
    u, s, vh = torch.linalg.svd(w_pre, full_matrices=False)
    part = (u[:, -4:] * s[-4:]) @ vh[-4:]
    delta = q.scaling * q.lora_B.weight.detach().double() @ q.lora_A.weight.detach().double()
    assert float((delta - part).norm() / part.norm()) < 1e-5
    assert model.semantics == 'residual'


def test_construction_mode_reproduces_the_release_defect():
    pretrained = _vit(seed=6)
    model = SoMAModel(_cfg(svd_init_on='construction'), _vit(seed=7), init_adapters=True)
    model.model.load_state_dict(pretrained.state_dict(), strict=False)
    assert model.init_adapters() == 0
    q = model.model.blocks[2].attn.q
    assert torch.equal(q.weight, pretrained.blocks[2].attn.q.weight)  # W_pretrained exactly
    assert float((q.lora_B.weight @ q.lora_A.weight).detach().abs().max()) > 0  # B@A != 0
    assert model.semantics == 'release'
    assert model.checkpoint_meta() == dict(semantics='release',
                                           lora_cfg=model.peft_config.to_dict())


def _default_init_linears(seed, dim, depth, mlp_ratio=4, patch=16):
    """Independent reference: the linears PyTorch's default init makes when the backbone's
    modules are built in DINOv2's order from ``seed`` (patch conv, then per block q, k, v,
    proj, fc1, fc2; norms, tokens and layer scales draw no random numbers)."""
    torch.manual_seed(seed)
    nn.Conv2d(3, dim, patch, patch)
    hidden = int(dim * mlp_ratio)
    shapes = [('attn.q', dim, dim), ('attn.k', dim, dim), ('attn.v', dim, dim),
              ('attn.proj', dim, dim), ('mlp.fc1', dim, hidden), ('mlp.fc2', hidden, dim)]
    return {f'blocks.{i}.{name}': nn.Linear(fan_in, fan_out)
            for i in range(depth) for name, fan_in, fan_out in shapes}


def _svd_inputs(monkeypatch):
    """Record the weight each SoMALinear hands to its SVD, by layer name."""
    seen, original = {}, SoMALinear.init_adapter

    def recording(self, generator=None):
        if not self.lora_initialized:
            seen[self.layer_name] = self.weight.detach().clone()
        return original(self, generator)

    monkeypatch.setattr(SoMALinear, 'init_adapter', recording)
    return seen


def test_construction_svd_sees_pytorch_default_init(monkeypatch):
    """svd_init_on='construction' (the release): the build-time SVD runs on the weights as
    ``nn.Linear``'s default init (kaiming-uniform, bias uniform) left them, not DINOv2's
    trunc-normal(0.02); B0 A0 are the minor components (float64 SVD) of those weights."""
    from soma.models.peft_backbone import wrap_backbone_with_soma
    seen = _svd_inputs(monkeypatch)
    torch.manual_seed(11)
    vit = DinoVisionTransformer(**TINY, lora_cfg=dict(r=4, start_lora_idx=2,
                                                      svd_init_on='construction'))
    model = wrap_backbone_with_soma(vit)
    ref = _default_init_linears(11, TINY['embed_dim'], TINY['depth'])
    layers = model.adapted_layers()
    assert sorted(seen) == sorted(layers) == sorted(f'blocks.{i}.{t}' for i in (2, 3)
                                                    for t in TARGETS)
    for name, layer in layers.items():
        w = ref[name].weight.detach()
        assert torch.equal(seen[name], w), name
        assert torch.equal(layer.bias, ref[name].bias), name
        assert float(w.abs().max()) <= 1 / math.sqrt(layer.in_features)  # default-init bound
        w64 = w.double()
        u, s, vh = torch.linalg.svd(w64, full_matrices=False)
        minor = (u[:, -4:] * s[-4:]) @ vh[-4:]
        ba = layer.scaling * (layer.lora_B.weight @ layer.lora_A.weight).detach().double()
        assert float((ba - minor).norm() / minor.norm()) < 1e-5, name
        torch.testing.assert_close(layer.weight.double() + ba, w64, rtol=0, atol=1e-6)
    # blocks before start_lora_idx keep their default init too (nothing re-initialised them)
    assert torch.equal(vit.blocks[0].mlp.fc2.weight, ref['blocks.0.mlp.fc2'].weight)


def test_pretrained_mode_construction_init_unchanged(monkeypatch):
    """The default path still gives the linears DINOv2's trunc-normal(0.02), zero bias, at
    construction, and runs no SVD before the weights are loaded."""
    from soma.models.peft_backbone import wrap_backbone_with_soma
    seen = _svd_inputs(monkeypatch)
    torch.manual_seed(11)
    vit = DinoVisionTransformer(**dict(TINY, embed_dim=64), lora_cfg=dict(r=4, start_lora_idx=2))
    model = wrap_backbone_with_soma(vit)
    assert not seen and not any(m.lora_initialized for m in model.adapted_layers().values())
    fc2 = vit.blocks[3].mlp.fc2
    assert torch.all(fc2.bias == 0)
    assert float(fc2.weight.std()) == pytest.approx(0.02, rel=0.1)
    assert float(fc2.weight.abs().max()) > 1 / math.sqrt(fc2.in_features)  # not default init


def test_release_enable_lora_is_accepted_and_ignored():
    """The release's unused ``enable_lora`` key: builds, warns once, changes nothing."""
    from soma.models.peft_backbone import wrap_backbone_with_soma
    outputs = {}
    for value in (None, True, False, [True, False]):
        lora_cfg = dict(r=4, start_lora_idx=2)
        if value is not None:
            lora_cfg['enable_lora'] = value
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            model = wrap_backbone_with_soma(_vit(seed=5, lora_cfg=lora_cfg))
        ours = [w for w in caught if 'enable_lora' in str(w.message)]
        assert len(ours) == (0 if value is None else 1), (value, [str(w.message) for w in ours])
        assert model.peft_config == SoMAConfig(r=4, start_lora_idx=2)
        assert 'enable_lora' not in model.peft_config.to_dict()
        with torch.no_grad():
            outputs[str(value)] = (model(_x()), model.state_dict())
    ref_out, ref_sd = outputs['None']
    for key, (out, sd) in outputs.items():
        assert sd.keys() == ref_sd.keys(), key
        assert all(torch.equal(sd[k], ref_sd[k]) for k in sd), key
        assert all(torch.equal(a, b) for a, b in zip(out, ref_out)), key
    with pytest.warns(UserWarning, match='enable_lora'):
        assert SoMAConfig(enable_lora=True) == SoMAConfig()


def test_merge_and_unload_and_merge_weights():
    model = SoMAModel(_cfg(merge_weights=True), _vit())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'lora_B' in name:
                p.add_(0.05)
    model.train()
    with torch.no_grad():
        ref = model(_x())
    model.eval()  # merges
    assert all(m.merged for m in model.adapted_layers().values())
    with torch.no_grad():
        _close(model(_x()), ref)
    assert not any(m.merged for m in model.train().adapted_layers().values())
    plain = model.merge_and_unload()
    assert not any(isinstance(m, SoMALinear) for m in plain.modules())
    with torch.no_grad():
        _close(plain(_x()), ref)


def test_parallel_init_equals_sequential_bit_for_bit():
    one = SoMAModel(_cfg(), _vit(seed=8), init_adapters=False)
    two = SoMAModel(_cfg(), _vit(seed=8), init_adapters=False)
    one.init_adapters()
    two.init_adapters(num_workers=3)
    for (k, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items()):
        assert torch.equal(a, b), k


def test_hf_dinov2_model_adapted_by_name_rules():
    transformers = pytest.importorskip('transformers')
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                       intermediate_size=64, image_size=32, patch_size=8,
                                       layerscale_value=1.0)
    torch.manual_seed(0)
    hf = transformers.Dinov2Model(config).eval()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=pixels).last_hidden_state
    targets = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'fc1', 'fc2']
    with pytest.raises(ValueError, match='layers_pattern'):
        SoMAModel(_cfg(target_modules=targets), transformers.Dinov2Model(config))
    model = SoMAModel(_cfg(target_modules=targets, layers_pattern='layer'), hf)
    assert sorted(model.adapted_layers()) == sorted(
        f'encoder.layer.{i}.{p}.{t}' for i in (2, 3)
        for p, t in [('attention', 'q_proj'), ('attention', 'k_proj'), ('attention', 'v_proj'),
                     ('attention', 'o_proj'), ('mlp', 'fc1'), ('mlp', 'fc2')])
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=pixels).last_hidden_state, ref,
                                   rtol=1e-5, atol=1e-5)
    trainable = _trainable(model)
    assert 'embeddings.mask_token' in trainable
    assert not any(n.startswith(('encoder.layer.0.', 'encoder.layer.1.')) for n in trainable)
    assert not any('norm' in n for n in trainable)


def test_plain_sequential_without_blocks():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8), nn.Linear(8, 8))
    x = torch.randn(4, 16)
    with torch.no_grad():
        ref = seq(x)
    with pytest.raises(ValueError, match='layers_pattern'):
        apply_soma(seq, dict(r=2, target_modules=['0', '2']))
    apply_soma(seq, dict(r=2, target_modules=['0', '2'], layers_pattern=None))
    assert isinstance(seq[0], SoMALinear) and isinstance(seq[2], SoMALinear)
    assert type(seq[3]) is nn.Linear
    with torch.no_grad():
        torch.testing.assert_close(seq(x), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='already has SoMA adapters'):
        apply_soma(seq, dict(r=2, target_modules=['0'], layers_pattern=None))


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"match no module of DinoVisionTransformer"):
        SoMAModel(_cfg(target_modules=['qkv']), _vit())
    with pytest.raises(ValueError, match=r'rank 64 .* blocks\.20\.attn\.q \(weight 32x32\)'):
        SoMAModel(_cfg(r=8, start_lora_idx=20, rank_ramp=True),
                  _vit(depth=21, out_indices=(0, 1, 2, 20)))
    with pytest.raises(ValueError, match='fan_in_fan_out'):
        SoMAModel(_cfg(fan_in_fan_out=True), _vit())
    vit = _vit()
    vit.blocks[2].attn.q.weight = nn.Parameter(
        vit.blocks[2].attn.q.weight.detach().to(torch.int8), requires_grad=False)
    with pytest.raises(TypeError, match=r'blocks\.2\.attn\.q: weight dtype torch\.int8'):
        SoMAModel(_cfg(), vit)


def test_config_validation_and_round_trip():
    cfg = SoMAConfig.from_dict(dict(type='soma', r=8, lora_alpha=8, lora_weight_init='soma_niter_4',
                                    target_modules=['q', 'v'], bias='lora_only'))
    assert cfg.niter == 4 and SoMAConfig.from_dict(cfg.to_dict()) == cfg
    assert SoraConfig is SoMAConfig and SoraModel is SoMAModel
    assert SoMAConfig().niter is None
    for bad, match in [(dict(lora_weight_init='pissa'), 'lora_weight_init'),
                       (dict(lora_weight_init='sora_niter_x'), 'lora_weight_init'),
                       (dict(bias='some'), 'bias'), (dict(r=0), 'r must be'),
                       (dict(type='lora'), 'type'), (dict(svd_init_on='later'), 'svd_init_on'),
                       (dict(target_modules=[]), 'target_modules'),
                       (dict(lora_rank=4), 'unknown lora_cfg key')]:
        with pytest.raises(ValueError, match=match):
            SoMAConfig.from_dict(bad)


def test_deepcopy_for_ema_and_attribute_delegation():
    import copy
    model = SoMAModel(_cfg(), _vit())
    twin = copy.deepcopy(model)  # mmengine's EMA copies the model this way
    assert twin.embed_dim == TINY['embed_dim']  # delegated to the wrapped backbone
    assert len(twin.adapted_layers()) == 12
    assert all(m.lora_initialized for m in twin.adapted_layers().values())
    with torch.no_grad():
        _close(twin(_x()), model(_x()))
    with pytest.raises(AttributeError):
        model.no_such_attribute


def test_package_is_pure_pytorch():
    """soma.peft imports no OpenMMLab package, and ``peft`` only inside functions."""
    import ast
    import pathlib
    import soma.peft
    for path in pathlib.Path(soma.peft.__file__).parent.glob('*.py'):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                    node.module or '']
                assert not any(n.split('.')[0] in ('mmengine', 'mmseg', 'mmdet', 'mmcv')
                               for n in names), (path.name, names)
        for node in tree.body:  # module level
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                    node.module or '']
                assert not any(n.split('.')[0] in ('peft', 'scipy', 'transformers')
                               for n in names), (path.name, names)
