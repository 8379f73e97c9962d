"""HFVisionBackbone: transformers ViTs (DINOv3, DINOv2, DINOv2+registers, SigLIP2) as backbones.

References are computed here from transformers itself (its own model called by hand, its own
hidden states, SigLIP2's own patchify function) and from a float64 SVD; tiny random configs
only (no downloads).
"""
import copy
import json
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from mmengine.hooks import Hook
from mmengine.runner import Runner
from transformers.models.siglip2.image_processing_pil_siglip2 import convert_image_to_patches

import soma  # noqa: F401  (registers the backbone)
from soma.models.backbones import HFVisionBackbone
from soma.models.peft_backbone import init_soma_after_weights, wrap_backbone_with_soma
from soma.peft import SoMALinear, SoMAModel

TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2)
FAMILIES = {  # model_type: (transformers class, config fields, prefix tokens, targets)
    'dinov3_vit': ('DINOv3ViTModel', dict(intermediate_size=64, num_register_tokens=4,
                                          patch_size=16, image_size=64, layerscale_value=0.5),
                   5, ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'up_proj', 'down_proj')),
    'dinov2': ('Dinov2Model', dict(mlp_ratio=2, patch_size=16, image_size=64), 1,
               ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'fc1', 'fc2')),
    'dinov2_with_registers': ('Dinov2WithRegistersModel',
                              dict(mlp_ratio=2, patch_size=16, image_size=64,
                                   num_register_tokens=4), 5,
                              ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'fc1', 'fc2')),
    'siglip2_vision_model': ('Siglip2VisionModel',
                             dict(intermediate_size=64, patch_size=16, num_patches=16,
                                  vision_use_head=False), 0,
                             ('q_proj', 'k_proj', 'v_proj', 'out_proj', 'fc1', 'fc2')),
}
OUT_INDICES = (0, 1, 2, 3)
LORA = dict(type='soma', r=4, lora_alpha=8, start_lora_idx=2)
H, W = 64, 96  # non-square, multiples of the patch


def _hf_folder(tmp_path, model_type, seed=0, **overrides):
    """A randomly initialised transformers model saved with save_pretrained; (folder, model)."""
    cls_name, fields, _, _ = FAMILIES[model_type]
    config = transformers.AutoConfig.for_model(model_type, **TINY, **{**fields, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(config).eval()
    with torch.no_grad():  # move norms / layer scales off their init so freezing matters
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))
    folder = str(tmp_path / model_type)
    model.save_pretrained(folder)
    return folder, model


def _reference_maps(model, model_type, x, out_indices=OUT_INDICES):
    """transformers' own hidden states, rearranged as the issue says (independent code)."""
    _, _, prefix, _ = FAMILIES[model_type]
    p = model.config.patch_size
    h, w = x.shape[-2] // p, x.shape[-1] // p
    with torch.no_grad():
        if model_type == 'siglip2_vision_model':
            patches = torch.from_numpy(np.stack([convert_image_to_patches(img.numpy(), p)
                                                 for img in x]))
            out = model(pixel_values=patches,
                        pixel_attention_mask=torch.ones(x.shape[0], h * w, dtype=torch.long),
                        spatial_shapes=torch.tensor([[h, w]] * x.shape[0]),
                        output_hidden_states=True)
        else:
            out = model(pixel_values=x, output_hidden_states=True)
    hidden = out.hidden_states
    assert len(hidden) == model.config.num_hidden_layers + 1
    maps = []
    for i, scale in zip(out_indices, (4, 2, 1, 0.5)):
        tokens = hidden[i + 1][:, prefix:]
        assert tokens.shape[1] == h * w
        fmap = tokens.permute(0, 2, 1).reshape(x.shape[0], -1, h, w)
        maps.append(F.interpolate(fmap, scale_factor=scale, mode='bilinear',
                                  align_corners=False))
    return maps


def _backbone(folder, **kw):
    kw.setdefault('out_indices', OUT_INDICES)
    return HFVisionBackbone(model=folder, **kw)


@pytest.fixture(scope='module', params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    folder, ref = _hf_folder(tmp_path_factory.mktemp('hf'), request.param)
    return request.param, folder, ref


# ---------------------------------------------------------------------------- outputs
def test_outputs_equal_transformers_hidden_states(family):
    model_type, folder, ref = family
    backbone = _backbone(folder).eval()
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        outs = backbone(x)
    expected = _reference_maps(ref, model_type, x)
    assert [tuple(o.shape) for o in outs] == [(2, 32, 16, 24), (2, 32, 8, 12), (2, 32, 4, 6),
                                              (2, 32, 2, 3)]
    for out, exp in zip(outs, expected):
        assert out.is_contiguous()
        torch.testing.assert_close(out, exp, rtol=1e-5, atol=1e-5)


def test_pretrained_weights_survive_init_weights(family):
    model_type, folder, ref = family
    backbone = _backbone(folder)
    backbone.init_weights()
    expected = ref.state_dict()
    got = backbone.hf_model.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


@pytest.mark.parametrize('svd_init_on', ['pretrained', 'construction'])
def test_init_weights_of_the_wrapped_backbone_changes_nothing(tmp_path, svd_init_on):
    """transformers' own init_weights() would re-randomise the adapters (not marked as loaded),
    e.g. those computed at construction (svd_init_on='construction'): it must not run."""
    folder, _ = _hf_folder(tmp_path, 'dinov3_vit')
    wrapped = wrap_backbone_with_soma(
        _backbone(folder, lora_cfg=dict(LORA, svd_init_on=svd_init_on)))
    before = {k: v.clone() for k, v in wrapped.state_dict().items()}
    wrapped.init_weights()
    after = wrapped.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []


def _check_residual_plus_adapter_is_pretrained(wrapped_state, pretrained, scaling):
    """Every pretrained tensor is in the SoMA-wrapped state (``model.hf_model.*``): the same
    one, or for an adapted layer W_res + s * B @ A."""
    for key, value in pretrained.items():
        full = 'model.hf_model.' + key
        assert full in wrapped_state, full
        stem = full[:-len('.weight')]
        if full.endswith('.weight') and stem + '.lora_A.weight' in wrapped_state:
            a, b = wrapped_state[stem + '.lora_A.weight'], wrapped_state[stem + '.lora_B.weight']
            torch.testing.assert_close(wrapped_state[full] + scaling * b @ a, value,
                                       rtol=0, atol=1e-6)
        else:
            assert torch.equal(wrapped_state[full], value), full


# ---------------------------------------------------------------------------- SoMA
def _block_of(name, pattern):
    parts = name.split('.')
    return int(parts[parts.index(pattern) + 1]) if pattern in parts else None


def test_soma_invariants_freezing_report_and_merge(family, tmp_path):
    model_type, folder, ref = family
    _, _, _, targets = FAMILIES[model_type]
    pattern = 'layers' if model_type == 'siglip2_vision_model' else 'layer'
    backbone = _backbone(folder, lora_cfg=dict(LORA)).eval()
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        before = backbone(x)
    wrapped = wrap_backbone_with_soma(backbone)
    wrapped.init_weights()
    init_soma_after_weights(wrapped)
    wrapped.eval()
    layers = wrapped.adapted_layers()
    # every target linear of blocks 2, 3 is adapted, none of blocks 0, 1
    expected_layers = {n for n, m in backbone.named_modules()
                       if isinstance(m, torch.nn.Linear) and n.split('.')[-1] in targets
                       and _block_of(n, pattern) in (2, 3)}
    assert set(layers) == expected_layers and expected_layers
    pretrained = ref.state_dict()
    for name, layer in layers.items():
        key = name[len('hf_model.'):] + '.weight'
        w0 = pretrained[key].double().numpy()
        s = layer.scaling
        delta = s * (layer.lora_B.weight @ layer.lora_A.weight).detach().double()
        np.testing.assert_allclose((layer.weight.detach().double() + delta).numpy(), w0,
                                   atol=1e-6)
        u, sv, vh = np.linalg.svd(w0, full_matrices=False)
        minor = (u[:, -4:] * sv[-4:]) @ vh[-4:]  # the r = 4 smallest triplets
        np.testing.assert_allclose(delta.numpy(), minor, atol=1e-5)
    with torch.no_grad():
        after = wrapped(x)
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    # freezing (rules written out here): adapters, the mask token, the target biases in
    # adapted blocks train; norms, layer scales, embeddings, cls/register tokens, blocks 0, 1
    # and everything else stay frozen
    wrapped.train()
    for name, param in wrapped.model.named_parameters():
        block = _block_of(name, pattern)
        module = name.rsplit('.', 2)[-2]
        expect = ('lora_' in name or name.endswith('mask_token')
                  or (name.endswith('.bias') and block in (2, 3) and module in targets))
        assert param.requires_grad == expect, name
    report = wrapped.trainable_parameter_report()
    assert report['trainable'] == sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    assert report['per_block'][0][0] == report['per_block'][1][0] == 0
    assert report['per_block'][2][0] > 0

    # merge back to a plain transformers model, which saves and reloads as one
    wrapped.eval()
    with torch.no_grad():
        soma_out = wrapped(x)
    merged = wrapped.merge_and_unload()
    assert type(merged.hf_model) is type(ref)
    assert not any(isinstance(m, SoMALinear) for m in merged.modules())
    merged.hf_model.save_pretrained(str(tmp_path / 'merged'))
    reloaded = _backbone(str(tmp_path / 'merged')).eval()
    with torch.no_grad():
        for a, b in zip(reloaded(x), soma_out):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_gated_dinov3_adapts_gate_proj(tmp_path):
    folder, _ = _hf_folder(tmp_path, 'dinov3_vit', use_gated_mlp=True, hidden_act='silu')
    wrapped = SoMAModel(dict(LORA, layers_pattern='layer',
                             target_modules=['gate_proj', 'up_proj', 'down_proj']),
                        _backbone(folder))
    assert sorted(n.split('.')[-1] for n in wrapped.adapted_layers()) == sorted(
        ['gate_proj', 'up_proj', 'down_proj'] * 2)


def test_lora_cfg_defaults_from_the_family(tmp_path):
    folder, _ = _hf_folder(tmp_path, 'siglip2_vision_model')
    backbone = _backbone(folder, lora_cfg=dict(r=4))
    assert backbone.lora_cfg['layers_pattern'] == 'layers'
    assert backbone.lora_cfg['start_lora_idx'] == 4 // 3
    assert 'out_proj' in backbone.lora_cfg['target_modules']
    given = _backbone(folder, lora_cfg=dict(r=4, start_lora_idx=3, target_modules=['fc1']))
    assert given.lora_cfg['start_lora_idx'] == 3 and given.lora_cfg['target_modules'] == ['fc1']


def test_gradient_checkpointing_same_outputs_and_grads(tmp_path):
    folder, _ = _hf_folder(tmp_path, 'dinov3_vit', pos_embed_rescale=None)  # no RoPE jitter
    x = torch.randn(1, 3, H, W)
    results = []
    for cp in (False, True):
        backbone = _backbone(folder, gradient_checkpointing=cp).train()
        loss = sum(o.square().mean() for o in backbone(x))
        loss.backward()
        grad = backbone.hf_model.model.layer[1].attention.q_proj.weight.grad
        results.append((loss.detach(), grad.clone()))
    assert backbone.hf_model.is_activation_checkpointing
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_random_init_from_a_config_dict():
    cls_name, fields, _, _ = FAMILIES['dinov2_with_registers']
    model = dict(model_type='dinov2_with_registers', **TINY, **fields)
    backbone = HFVisionBackbone(model=model, out_indices=(0, 1, 2, 3)).eval()
    assert type(backbone.hf_model).__name__ == cls_name
    assert not backbone.loads_pretrained_weights
    x = torch.randn(1, 3, 48, 32)
    with torch.no_grad():
        outs = backbone(x)
    for out, exp in zip(outs, _reference_maps(backbone.hf_model, 'dinov2_with_registers', x)):
        torch.testing.assert_close(out, exp)


def test_pad_to_patch_zero_pads_bottom_right(tmp_path):
    folder, ref = _hf_folder(tmp_path, 'dinov3_vit')
    backbone = _backbone(folder, pad_to_patch=True).eval()
    x = torch.randn(1, 3, 50, 90)
    with torch.no_grad():
        outs = backbone(x)
    for out, exp in zip(outs, _reference_maps(ref, 'dinov3_vit', F.pad(x, (0, 6, 0, 14)))):
        torch.testing.assert_close(out, exp, rtol=1e-5, atol=1e-5)


def test_siglip2_image_text_folder_uses_its_vision_tower(tmp_path):
    _, fields, _, _ = FAMILIES['siglip2_vision_model']
    text = dict(TINY, intermediate_size=64, vocab_size=64, bos_token_id=1, eos_token_id=2,
                pad_token_id=0)
    config = transformers.Siglip2Config(text_config=text, vision_config=dict(TINY, **fields))
    torch.manual_seed(0)
    full = transformers.Siglip2Model(config).eval()
    full.save_pretrained(str(tmp_path / 'siglip2'))
    backbone = _backbone(str(tmp_path / 'siglip2')).eval()
    assert type(backbone.hf_model).__name__ == 'Siglip2VisionModel'
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        outs = backbone(x)
    expected = _reference_maps(full.vision_model, 'siglip2_vision_model', x)
    for out, exp in zip(outs, expected):
        torch.testing.assert_close(out, exp, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- training
def _seg_cfg(tmp_path, folder, iters=2):
    from soma.apis.demo import demo_config
    from soma.datasets import make_synthetic_dg_benchmark
    data_root = tmp_path / 'data'
    if not data_root.exists():
        make_synthetic_dg_benchmark(data_root, num_train=2, num_val=1, size=(64, 64))
    cfg = demo_config(data_root, str(tmp_path / 'work'), iters, val=False, image_size=64)
    cfg.train_dataloader.batch_size = 2
    cfg.model.backbone = dict(type='HFVisionBackbone', model=folder, out_indices=[0, 1, 2, 3],
                              lora_cfg=dict(LORA))
    cfg.model.decode_head = dict(
        type='FCNHead', in_channels=32, in_index=3, channels=16, num_convs=1,
        concat_input=False, dropout_ratio=0.0, num_classes=19,
        norm_cfg=dict(type='GN', num_groups=4), align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0))
    cfg.model.pop('auxiliary_head', None)
    cfg.default_hooks.checkpoint.interval = iters
    return cfg


def test_peft_segmentor_trains_a_tiny_dinov3(tmp_path):
    """A real Runner: it initialises the whole model (mmengine's init_weights recursion) and
    the folder's weights must be what the adapters were computed from; then 2 iterations."""
    folder, ref = _hf_folder(tmp_path, 'dinov3_vit')
    cfg = _seg_cfg(tmp_path, folder, iters=2)
    runner = Runner.from_cfg(cfg)
    before = {}

    class Probe(Hook):
        def before_train(self, runner):
            before.update({k: v.clone() for k, v in runner.model.state_dict().items()})

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            before.setdefault('_losses', []).append(float(outputs['loss'].detach()))

    runner.register_hook(Probe())
    runner.train()
    losses = before.pop('_losses')
    _check_residual_plus_adapter_is_pretrained(
        {k[len('backbone.'):]: v for k, v in before.items() if k.startswith('backbone.')},
        ref.state_dict(), scaling=LORA['lora_alpha'] / LORA['r'])
    assert len(losses) == 2 and all(np.isfinite(losses))
    after = runner.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    backbone_changed = {k for k in changed if k.startswith('backbone.')}
    assert any(k.startswith('decode_head.') for k in changed)
    assert any('lora_' in k for k in backbone_changed)
    assert all('lora_' in k or k.endswith('.bias') or k.endswith('mask_token')
               for k in backbone_changed), backbone_changed
    assert not any('.layer.0.' in k or '.layer.1.' in k for k in backbone_changed)
    assert osp.isfile(osp.join(cfg.work_dir, 'iter_2.pth'))


# ---------------------------------------------------------------------------- bad input
def _one_line(excinfo, *words):
    message = str(excinfo.value)
    assert '\n' not in message, message
    for word in words:
        assert word in message, message


def test_folder_without_config_json(tmp_path):
    with pytest.raises(FileNotFoundError) as excinfo:
        HFVisionBackbone(model=str(tmp_path))
    _one_line(excinfo, 'config.json', str(tmp_path))


def test_model_type_not_a_vit_encoder(tmp_path):
    (tmp_path / 'config.json').write_text(json.dumps(dict(model_type='bert')))
    with pytest.raises(ValueError) as excinfo:
        HFVisionBackbone(model=str(tmp_path))
    _one_line(excinfo, "'bert'", 'config.json', 'dinov3_vit')
    with pytest.raises(ValueError) as excinfo:
        HFVisionBackbone(model=dict(model_type='gpt2'))
    _one_line(excinfo, "'gpt2'")


@pytest.mark.parametrize('out_indices', [(0, 1, 2, 4), (-1, 0, 1, 2), (0, 1, 2)])
def test_out_indices_outside_the_depth(out_indices):
    model = dict(model_type='dinov3_vit', **TINY, intermediate_size=64)
    with pytest.raises(ValueError) as excinfo:
        HFVisionBackbone(model=model, out_indices=out_indices)
    _one_line(excinfo, 'out_indices')


def test_target_modules_that_match_nothing():
    model = dict(model_type='dinov3_vit', **TINY, intermediate_size=64)
    backbone = HFVisionBackbone(model=model, out_indices=(0, 1, 2, 3),
                                lora_cfg=dict(r=4, target_modules=['q', 'k', 'v', 'proj']))
    with pytest.raises(ValueError) as excinfo:
        wrap_backbone_with_soma(backbone)
    _one_line(excinfo, "['q', 'k', 'v', 'proj']", 'q_proj')


def test_input_not_a_multiple_of_the_patch():
    model = dict(model_type='dinov3_vit', **TINY, intermediate_size=64)
    backbone = HFVisionBackbone(model=model, out_indices=(0, 1, 2, 3))
    with pytest.raises(ValueError) as excinfo:
        backbone(torch.randn(1, 3, 64, 40))
    _one_line(excinfo, '64x40', '16', 'pad_to_patch')


def test_registered_in_mmseg_and_mmdet():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG
    assert SEG.get('HFVisionBackbone') is HFVisionBackbone
    assert DET.get('HFVisionBackbone') is HFVisionBackbone
    cfg = dict(type='HFVisionBackbone', out_indices=(0, 1, 2, 3),
               model=dict(model_type='siglip2_vision_model', **TINY, num_patches=16))
    assert isinstance(DET.build(copy.deepcopy(cfg)), HFVisionBackbone)
