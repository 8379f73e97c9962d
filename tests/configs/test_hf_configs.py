"""The HFVisionBackbone configs: they load, keep the DINOv2-L recipe but for the backbone,
carry SoMA r=16 with the first third of the blocks frozen, and build and run with a tiny
random model of the same family in place of the weights folder."""
import copy
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, 'configs', 'soma')
DINOV2_L = 'soma_dinov2-L_mask2former.py'
V3_L = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'up_proj', 'down_proj']
V3_7B = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']
# config -> (model type, depth of the real model, adapted linears, width, the DINOv2 config
# whose recipe it keeps)
HF_CONFIGS = {
    'soma_dinov3-L_mask2former.py': ('dinov3_vit', 24, V3_L, 1024, DINOV2_L),
    'soma_dinov3-L_mask2former_gsu2cbm.py': (
        'dinov3_vit', 24, V3_L, 1024, 'soma_dinov2-L_mask2former_gsu2cbm.py'),
    'soma_dinov3-L_mask2former_gsu2cbm_1024x1024.py': (
        'dinov3_vit', 24, V3_L, 1024, 'soma_dinov2-L_mask2former_gsu2cbm_1024x1024.py'),
    'soma_dinov3-7B_mask2former.py': ('dinov3_vit', 40, V3_7B, 4096, DINOV2_L),
    'soma_hf-dinov2-L_mask2former.py': (
        'dinov2', 24, ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'fc1', 'fc2'], 1024, DINOV2_L),
    'soma_hf-dinov2reg-L_mask2former.py': (
        'dinov2_with_registers', 24, ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'fc1', 'fc2'],
        1024, DINOV2_L),
    'soma_hf-siglip2-B_mask2former.py': (
        'siglip2_vision_model', 12, ['q_proj', 'k_proj', 'v_proj', 'out_proj', 'fc1', 'fc2'],
        768, DINOV2_L),
}
TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2)
TINY_FIELDS = {
    'dinov3_vit': dict(intermediate_size=64, num_register_tokens=4),
    'dinov2': dict(mlp_ratio=2, image_size=56),  # patch 14: 64 px inputs are padded
    'dinov2_with_registers': dict(mlp_ratio=2, image_size=56),
    'siglip2_vision_model': dict(intermediate_size=64, patch_size=16, num_patches=16),
}


def load(name):
    return Config.fromfile(os.path.join(CONFIGS, name))


def test_every_hf_config_is_listed():
    names = {n for n in os.listdir(CONFIGS) if n.startswith(('soma_dinov3', 'soma_hf-'))}
    assert names == set(HF_CONFIGS)


@pytest.mark.parametrize('name', sorted(HF_CONFIGS))
def test_recipe_is_dinov2_l_but_for_the_backbone(name):
    _, depth, targets, width, reference = HF_CONFIGS[name]
    cfg, ref = load(name).to_dict(), load(reference).to_dict()
    backbone = cfg['model'].pop('backbone')
    ref['model'].pop('backbone')
    ref['model']['decode_head']['in_channels'] = [width] * 4
    assert cfg == ref
    assert backbone['type'] == 'HFVisionBackbone'
    assert backbone['model'].startswith('checkpoints/')
    assert len(backbone['out_indices']) == 4 and backbone['out_indices'][-1] == depth - 1
    lora = backbone['lora_cfg']
    assert (lora['r'], lora['lora_alpha'], lora['bias']) == (16, 16, 'all')
    assert lora['start_lora_idx'] == depth // 3  # DINOv3-L: blocks 0..7 of 24 frozen
    assert lora['target_modules'] == targets


def _tiny(name):
    model_type, _, targets, _, _ = HF_CONFIGS[name]
    cfg = copy.deepcopy(load(name).model)
    fields = dict(TINY_FIELDS[model_type])
    if 'gate_proj' in targets:  # DINOv3-7B: SwiGLU, no q/k/v biases (see supported.py)
        fields.update(use_gated_mlp=True, hidden_act='silu', query_bias=False,
                      value_bias=False)
    cfg.backbone.update(model=dict(model_type=model_type, **TINY, **fields),
                        out_indices=[0, 1, 2, 3])
    cfg.backbone.lora_cfg.update(r=4, start_lora_idx=2)
    head = cfg.decode_head
    head.in_channels = [32] * 4
    head.pixel_decoder.encoder.num_layers = 1
    head.transformer_decoder.num_layers = 3
    head.train_cfg.num_points = 256
    cfg.data_preprocessor.size = (64, 64)
    cfg.test_cfg.update(crop_size=(64, 64), stride=(43, 43))
    return cfg


def _batch(n):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(n):
        inputs.append(torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8))
        s = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 19, (1, 64, 64),
                                                                  generator=g)))
        s.set_metainfo(dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64)))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.parametrize('name', sorted(HF_CONFIGS))
def test_builds_and_runs_with_a_tiny_model(name):
    import soma  # noqa: F401
    from mmseg.registry import MODELS
    _, _, targets, _, _ = HF_CONFIGS[name]
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(_tiny(name))
        model.init_weights()
        model.train()
        losses = model(**model.data_preprocessor(_batch(2), training=True), mode='loss')
        assert all(torch.isfinite(v).all() for k, v in losses.items() if 'loss' in k)
        model.eval()
        with torch.no_grad():
            data = model.data_preprocessor(_batch(1), training=False)
            pred = model(**data, mode='predict')[0].pred_sem_seg.data
    assert pred.shape == (1, 64, 64)
    adapted = {n.rsplit('.', 1)[-1] for n in model.backbone.adapted_layers()}
    assert adapted == set(targets)
    trainable = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
    d, i, r = 32, 64, 4
    if name.startswith('soma_dinov3-L'):
        # r (in + out) per adapted linear, the target biases (no key bias), the mask token
        per_block = r * (4 * 2 * d + 2 * (d + i)) + (3 * d + i + d)
        assert trainable == 2 * per_block + d
    if name.startswith('soma_dinov3-7B'):
        # gate and up (d -> i), down (i -> d); biases of o, gate, up, down only
        per_block = r * (4 * 2 * d + 3 * (d + i)) + (d + 2 * i + d)
        assert trainable == 2 * per_block + d
        hf = model.backbone.model.hf_model
        assert hf.dtype == torch.bfloat16 and hf.is_activation_checkpointing
