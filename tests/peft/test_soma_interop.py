"""soma.peft.interop: a SoMA model loads as a standard ``peft`` LoRA adapter (real peft)."""
import json

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
