"""soma.peft.interop: a SoMA model loads as a standard ``peft`` LoRA adapter (real peft)."""
import json
import pathlib

import pytest
import torch
from torch import nn

from soma.models.backbones.dinov2 import DinoVisionTransformer
from soma.peft import SoMAConfig, SoMAModel
from soma.peft.interop import (ADAPTER_CONFIG_NAME, RESIDUAL_BASE_NAME, export_peft_adapter,
                               save_peft_adapter)

peft = pytest.importorskip('peft')
safetensors_torch = pytest.importorskip('safetensors.torch')

TINY = dict(img_size=32, patch_size=16, embed_dim=32, num_heads=2, init_values=1.0)
REPO_TESTS = pathlib.Path(__file__).resolve().parents[1]


def _train_adapters(model, seed=0):
    """Stand-in for training: move every adapter and bias away from its init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def _load_with_peft(folder, base):
    base.load_state_dict(safetensors_torch.load_file(f'{folder}/{RESIDUAL_BASE_NAME}'))
    return peft.PeftModel.from_pretrained(base, str(folder)).eval()


@pytest.mark.parametrize('rank_ramp', [False, True])
def test_dinov2_exports_as_peft_lora(tmp_path, rank_ramp):
    kw = dict(TINY, depth=16, out_indices=(3, 7, 11, 15))
    torch.manual_seed(0)
    model = SoMAModel(SoMAConfig(r=2, start_lora_idx=8, rank_ramp=rank_ramp),
                      DinoVisionTransformer(**kw))
    _train_adapters(model)
    save_peft_adapter(model, tmp_path)
    config = json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())
    assert config['peft_type'] == 'LORA' and config['r'] == 2 and config['lora_alpha'] == 16
    assert config['layers_to_transform'] == list(range(8, 16))
    assert bool(config['rank_pattern']) == rank_ramp
    peft_model = _load_with_peft(tmp_path, DinoVisionTransformer(**kw))
    x = torch.randn(1, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        for a, b in zip(model(x), peft_model(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    lora_names = {n.removeprefix('base_model.model.') for n, m in peft_model.named_modules()
                  if isinstance(m, peft.tuners.lora.Linear)}
    assert lora_names == set(model.adapted_layers())
    if rank_ramp:
        assert peft_model.base_model.model.blocks[12].attn.q.r['default'] == 4


def test_hf_dinov2_and_regex_targets_export(tmp_path):
    transformers = pytest.importorskip('transformers')
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                       intermediate_size=64, image_size=32, patch_size=8,
                                       layerscale_value=1.0)
    torch.manual_seed(0)
    hf = transformers.Dinov2Model(config)
    base_sd = {k: v.clone() for k, v in hf.state_dict().items()}
    model = SoMAModel(SoMAConfig(r=2, start_lora_idx=1, layers_pattern='layer',
                                 target_modules=r'.*\.attention\.(q_proj|v_proj)'), hf)
    _train_adapters(model)
    lora_config, adapter, base = export_peft_adapter(model)
    assert sorted(lora_config.target_modules) == sorted(model.adapted_layers())  # exact names
    assert set(base) == set(base_sd)
    save_peft_adapter(model, tmp_path)
    plain = transformers.Dinov2Model(config)
    peft_model = _load_with_peft(tmp_path, plain)
    pixels = torch.randn(1, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=pixels).last_hidden_state,
                                   peft_model(pixel_values=pixels).last_hidden_state,
                                   rtol=1e-5, atol=1e-5)


def test_plain_sequential_export_round_trip(tmp_path):
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 8))  # noqa: E731
    model = SoMAModel(dict(r=3, target_modules=['0', '2'], layers_pattern=None), make())
    _train_adapters(model)
    lora_config, adapter, _ = export_peft_adapter(model)
    assert set(adapter) == {f'base_model.model.{i}.lora_{ab}.weight' for i in (0, 2)
                            for ab in 'AB'}
    assert adapter['base_model.model.2.lora_B.weight'].shape == (8, 3)
    save_peft_adapter(model, tmp_path)
    peft_model = _load_with_peft(tmp_path, make())
    x = torch.randn(5, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), peft_model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match='SoMAModel'):
        export_peft_adapter(make())


# ------------------------------------------------------------------ LoRA over the public weights
def _vit(weights=None, **kw):
    vit = DinoVisionTransformer(**kw)
    if weights is not None:
        vit.load_state_dict(weights)
    return vit


def _effective_weights64(model):
    """``{layer: W + s*B@A}`` in float64, from the SoMA layers' own tensors."""
    return {n: m.weight.double() + m.scaling * m.lora_B.weight.double() @ m.lora_A.weight.double()
            for n, m in model.adapted_layers().items()}


@pytest.mark.parametrize('semantics,rank_ramp', [('residual', False), ('residual', True),
                                                 ('release', False)])
def test_delta_over_the_pretrained_weights_loads_in_peft(tmp_path, semantics, rank_ramp):
    from soma.peft.interop import ADAPTER_WEIGHTS_NAME, save_peft_delta
    depth = 16 if rank_ramp else 4
    kw = dict(TINY, depth=depth, out_indices=tuple(range(depth - 4, depth)))
    torch.manual_seed(0)
    w_pre = {k: v.clone() for k, v in _vit(**kw).state_dict().items()}  # the public weights
    residual = semantics == 'residual'
    model = SoMAModel(SoMAConfig(r=2, lora_alpha=6, start_lora_idx=depth - 3,
                                 rank_ramp=rank_ramp), _vit(w_pre, **kw), init_adapters=residual)
    initial = None
    if residual:  # W_res = W_pre - s*B0@A0
        initial = {n: (m.lora_B.weight.clone(), m.lora_A.weight.clone())
                   for n, m in model.adapted_layers().items()}
    _train_adapters(model)
    paths = save_peft_delta(model, str(tmp_path), initial)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME])
    config = json.loads(open(paths[ADAPTER_CONFIG_NAME]).read())
    factor = 2 if residual else 1
    assert config['r'] == 2 * factor and config['lora_alpha'] == 6 * factor
    assert config['bias'] == 'lora_only'
    peft_model = peft.PeftModel.from_pretrained(_vit(w_pre, **kw), str(tmp_path)).eval()
    if rank_ramp:
        assert peft_model.base_model.model.blocks[13].attn.q.r['default'] == 2 * 2 * factor
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        for a, b in zip(model(x), peft_model(x)):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    want = _effective_weights64(model)
    plain = peft_model.merge_and_unload()
    for name, weight in want.items():
        merged = plain.get_submodule(name).weight.double()
        assert (merged - weight).norm() <= 1e-6 * weight.norm(), name
        torch.testing.assert_close(plain.get_submodule(name).bias,
                                   model.model.get_submodule(name).bias, rtol=0, atol=0)


def test_extract_and_merge_tools_with_a_peft_folder(tmp_path):
    """tools/: --peft-dir writes a folder peft loads on the converted weights; merging with it
    rebuilds W_res exactly as the SVD re-initialisation does, without an SVD."""
    import sys
    sys.path.insert(0, str(REPO_TESTS / 'tools'))
    from _ckpt_fixtures import TINY as TINY_TOOLS
    from _ckpt_fixtures import converted_backbone, head_state_dict
    from _tool_runner import tool_main

    from soma.checkpoints import merge_soma_weights
    from soma.utils.checkpoint_io import load_checkpoint_file
    kw = dict(TINY_TOOLS)
    w_pre = converted_backbone(seed=4)
    converted = str(tmp_path / 'converted.pth')
    torch.save(w_pre, converted)
    for semantics in ('residual', 'release'):
        residual = semantics == 'residual'
        config = SoMAConfig(r=4, lora_alpha=8, start_lora_idx=2)
        model = SoMAModel(config, _vit(w_pre, **kw), init_adapters=residual)
        _train_adapters(model, seed=1)
        full = {'state_dict': {f'backbone.{k}': v for k, v in model.state_dict().items()},
                'meta': {'soma': dict(model.checkpoint_meta(), semantics=semantics)}}
        full['state_dict'].update(head_state_dict())
        final, adapter = str(tmp_path / f'{semantics}.pth'), str(tmp_path / f'{semantics}_a.pth')
        folder = tmp_path / f'{semantics}_peft'
        torch.save(full, final)
        assert tool_main('extract_soma_weights.py', '--final_ckpt', final, '--soma_ckpt', adapter,
                         '--peft-dir', folder, '--backbone', converted) == 0
        assert sum(p.stat().st_size for p in folder.iterdir()) < 1e6
        peft_model = peft.PeftModel.from_pretrained(_vit(w_pre, **kw), str(folder)).eval()
        x = torch.randn(1, 3, 64, 64)
        model.eval()
        with torch.no_grad():
            for a, b in zip(model(x), peft_model(x)):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        merged = str(tmp_path / f'{semantics}_merged.pth')
        assert tool_main('merge_soma_weights.py', '--backbone_ckpt', converted, '--soma_ckpt',
                         adapter, '--merged_ckpt', merged, '--peft-dir', folder) == 0
        got = load_checkpoint_file(merged)
        assert got['meta']['soma']['semantics'] == semantics
        want = merge_soma_weights(converted, adapter)['state_dict']  # the SVD rebuild
        assert set(got['state_dict']) == set(want)
        assert all(torch.equal(got['state_dict'][k], v) for k, v in want.items())
        for key, value in full['state_dict'].items():  # the trained model itself
            assert torch.equal(got['state_dict'][key], value), key
    # a peft folder of another model is refused with one line
    assert tool_main('merge_soma_weights.py', '--backbone_ckpt', converted, '--soma_ckpt',
                     str(tmp_path / 'residual_a.pth'), '--merged_ckpt', str(tmp_path / 'x.pth'),
                     '--peft-dir', tmp_path / 'release_peft') == 1
    assert not (tmp_path / 'x.pth').exists()
