"""The supported-backbone table (README), SoMA's default freezing for any depth on the meta
device, and HFVisionBackbone's ``dtype`` (bfloat16 weights, checked against transformers)."""
import os
import re

import pytest
import torch
import torch.nn.functional as F
import transformers

import soma  # noqa: F401
from soma.models.backbones import HFVisionBackbone
from soma.models.backbones.supported import (SUPPORTED_BACKBONES, build_soma_backbone,
                                             soma_trainable_parameters,
                                             supported_backbones_table)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _row(size, family='DINOv3'):
    return next(r for r in SUPPORTED_BACKBONES if r.family == family and r.size == size)


def _blocks_with(wrapped, pattern='layer'):
    blocks = set()
    for name, param in wrapped.named_parameters():
        m = re.search(rf'\.{pattern}\.(\d+)\.', name)
        if param.requires_grad and m:
            blocks.add(int(m.group(1)))
    return blocks


@pytest.mark.parametrize('size,depth', [('ViT-B/16', 12), ('ViT-7B/16', 40)])
def test_first_third_of_the_blocks_frozen_by_default(size, depth):
    model = _row(size).model
    assert model['num_hidden_layers'] == depth
    wrapped = build_soma_backbone(model)
    assert next(wrapped.parameters()).device.type == 'meta'
    assert wrapped.model.lora_cfg['start_lora_idx'] == depth // 3
    assert _blocks_with(wrapped) == set(range(depth // 3, depth))
    adapted = wrapped.adapted_layers()
    assert {int(n.split('.')[3]) for n in adapted} == set(range(depth // 3, depth))
    # the config can say otherwise
    given = build_soma_backbone(model, dict(start_lora_idx=depth - 2))
    assert _blocks_with(given) == {depth - 2, depth - 1}


def test_7b_counts_by_hand():
    """DINOv3-7B: width 4096, SwiGLU 8192, no q/k/v biases; r=16 on blocks 13..39."""
    row = _row('ViT-7B/16')
    wrapped = build_soma_backbone(row.model)
    total = sum(p.numel() for n, p in wrapped.named_parameters() if 'lora_' not in n)
    d, i, r = 4096, 8192, 16
    block = 4 * d * d + d + 3 * d * i + 2 * i + d + 2 * 2 * d + 2 * d  # + o/MLP biases, norms
    embeddings = 3 * 16 * 16 * d + d + d + 4 * d + d  # patch conv, cls, registers, mask
    assert total == 40 * block + embeddings + 2 * d == 6_716_035_072
    adapters = r * (4 * 2 * d + 3 * (d + i))
    biases = d + 2 * i + d  # o_proj, gate_proj, up_proj, down_proj
    assert soma_trainable_parameters(row.model) == 27 * (adapters + biases) + d  # + mask token


def test_readme_table_is_what_the_code_computes():
    with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
        readme = f.read()
    section = readme.split('\n## Supported backbones\n', 1)[1].split('\n## ', 1)[0]
    table = [line for line in section.splitlines() if line.startswith('|')]
    assert '\n'.join(table) == supported_backbones_table()
    assert readme.index('## Supported backbones') < readme.index('## SoMA on any model')
    for row in SUPPORTED_BACKBONES:
        for config in row.configs:
            assert os.path.isfile(os.path.join(REPO, config)), config


# ---------------------------------------------------------------------------- dtype
@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    config = transformers.DINOv3ViTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
        num_register_tokens=4, patch_size=16, layerscale_value=0.5, pos_embed_rescale=None)
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp('dtype') / 'dinov3')
    transformers.DINOv3ViTModel(config).save_pretrained(path)
    return path


def test_bfloat16_weights_match_transformers_in_bfloat16(folder):
    backbone = HFVisionBackbone(model=folder, out_indices=(0, 1, 2, 3), dtype='bfloat16').eval()
    assert {p.dtype for p in backbone.parameters()} == {torch.bfloat16}
    ref = transformers.DINOv3ViTModel.from_pretrained(folder, dtype=torch.bfloat16).eval()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        outs = backbone(x)
        hidden = ref(pixel_values=x.to(torch.bfloat16), output_hidden_states=True).hidden_states
    for out, i, scale in zip(outs, (0, 1, 2, 3), (4, 2, 1, 0.5)):
        assert out.dtype == torch.float32  # back to the input's dtype for the float32 heads
        fmap = hidden[i + 1][:, 5:].float().permute(0, 2, 1).reshape(1, 32, 3, 4)
        exp = F.interpolate(fmap, scale_factor=scale, mode='bilinear', align_corners=False)
        torch.testing.assert_close(out, exp, rtol=0, atol=0)


def test_default_dtype_is_float32_whatever_the_folder_stores(folder, tmp_path):
    transformers.DINOv3ViTModel.from_pretrained(folder, dtype=torch.bfloat16).save_pretrained(
        str(tmp_path / 'bf16'))
    backbone = HFVisionBackbone(model=str(tmp_path / 'bf16'), out_indices=(0, 1, 2, 3))
    assert {p.dtype for p in backbone.parameters()} == {torch.float32}
    random = HFVisionBackbone(model=dict(model_type='dinov3_vit', hidden_size=32,
                                         num_hidden_layers=4, num_attention_heads=2,
                                         intermediate_size=64),
                              out_indices=(0, 1, 2, 3), dtype=torch.bfloat16)
    assert {p.dtype for p in random.parameters()} == {torch.bfloat16}


def test_bfloat16_soma_with_checkpointing_trains(folder):
    from soma.models.peft_backbone import init_soma_after_weights, wrap_backbone_with_soma
    backbone = HFVisionBackbone(model=folder, out_indices=(0, 1, 2, 3), dtype='bfloat16',
                                gradient_checkpointing=True, lora_cfg=dict(r=4, lora_alpha=4))
    wrapped = wrap_backbone_with_soma(backbone)
    init_soma_after_weights(wrapped)
    wrapped.train()
    loss = sum(o.square().mean() for o in wrapped(torch.randn(1, 3, 32, 32)))
    loss.backward()
    layer = backbone.hf_model.model.layer[3].mlp.up_proj
    assert layer.lora_A.weight.dtype == torch.float32  # float32 adapters on bf16 weights
    assert layer.lora_A.weight.grad.abs().sum() > 0 and layer.weight.grad is None


def test_bad_dtype_is_one_line():
    with pytest.raises(ValueError) as excinfo:
        HFVisionBackbone(model=dict(model_type='dinov3_vit', hidden_size=32,
                                    num_hidden_layers=4, num_attention_heads=2,
                                    intermediate_size=64), dtype='int8')
    assert "'int8'" in str(excinfo.value) and '\n' not in str(excinfo.value)
