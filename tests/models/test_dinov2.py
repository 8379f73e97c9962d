"""DinoVisionTransformer: numerics against Hugging Face Dinov2Model, shapes, pos-embed
resizing, masks, attention implementations, activation checkpointing, init/loading."""
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import Dinov2Config, Dinov2Model

import soma  # noqa: F401  (registers the backbone)
from soma.models.backbones.convert_dinov2 import hf_dinov2_to_ours
from soma.models.backbones.dinov2 import ARCH_SETTINGS, DinoVisionTransformer
from soma.registry import DET_MODELS, SEG_MODELS
from soma.utils.checkpoint_io import save_checkpoint_file

TINY = dict(img_size=64, patch_size=16, embed_dim=64, depth=4, num_heads=2,
            out_indices=(0, 1, 2, 3))


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def randomise_(module, seed=0):
    """Every parameter random (norm weights around 1), so no term is trivially zero/one."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith(('norm1.weight', 'norm2.weight', 'norm.weight', 'layernorm.weight')):
                p.copy_(1 + 0.1 * noise)
            elif name.endswith(('gamma', 'lambda1')):
                p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=gen))
            else:
                p.copy_(0.2 * noise)
    return module


def tiny_backbone(seed=0, **overrides):
    cfg = dict(TINY, **overrides)
    return randomise_(DinoVisionTransformer(**cfg), seed).eval()


def hf_pair(use_swiglu=False, mlp_ratio=4):
    config = Dinov2Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=2,
                          patch_size=14, image_size=56, layerscale_value=1e-5,
                          mlp_ratio=mlp_ratio, use_swiglu_ffn=use_swiglu,
                          attn_implementation='eager')
    hf = randomise_(Dinov2Model(config)).eval()
    ours = DinoVisionTransformer(img_size=56, patch_size=14, embed_dim=64, depth=4,
                                 num_heads=2, mlp_ratio=mlp_ratio,
                                 ffn_layer='swiglufused' if use_swiglu else 'mlp',
                                 out_indices=(0, 1, 2, 3), attn_impl='sdpa').eval()
    ours.load_state_dict(hf_dinov2_to_ours(hf.state_dict()), strict=True)
    return hf, ours


@pytest.mark.parametrize('use_swiglu', [False, True], ids=['mlp', 'swiglu'])
def test_matches_hf_dinov2_every_block(use_swiglu):
    hf, ours = hf_pair(use_swiglu)
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True)
        blocks = ours.get_intermediate_layers(x, n=4, norm=False, return_class_token=True)
        final = ours.forward_features(x)
    assert len(ref.hidden_states) == 5  # embeddings + 4 blocks
    for i, (patch, cls) in enumerate(blocks):
        assert rel_err(patch, ref.hidden_states[i + 1][:, 1:]) < 1e-4, f'block {i}'
        assert rel_err(cls, ref.hidden_states[i + 1][:, 0]) < 1e-4, f'block {i} cls'
    assert rel_err(final['x_norm_patchtokens'], ref.last_hidden_state[:, 1:]) < 1e-4
    assert rel_err(final['x_norm_clstoken'], ref.last_hidden_state[:, 0]) < 1e-4
    # forward(): the same block outputs as maps, x1 scale is exactly block 2's tokens
    with torch.no_grad():
        maps = ours(x)
    tokens = ref.hidden_states[3][:, 1:].transpose(1, 2).reshape(2, 64, 4, 4)
    assert rel_err(maps[2], tokens) < 1e-4


def test_masks_match_hf_bool_masked_pos():
    hf, ours = hf_pair()
    x = torch.randn(2, 3, 56, 56)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, :5] = True
    masks[1, 7::3] = True
    with torch.no_grad():
        ref = hf(pixel_values=x, bool_masked_pos=masks).last_hidden_state
        out = ours.forward_features(x, masks=masks)
        unmasked = ours.forward_features(x)
    assert out['masks'] is masks
    assert rel_err(out['x_norm_patchtokens'], ref[:, 1:]) < 1e-4
    assert not torch.allclose(out['x_norm_patchtokens'], unmasked['x_norm_patchtokens'])


def test_sdpa_and_naive_attention_agree():
    naive = tiny_backbone(attn_impl='naive')
    sdpa = tiny_backbone(attn_impl='sdpa')
    auto = tiny_backbone(attn_impl='auto')
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b, c in zip(naive(x), sdpa(x), auto(x)):
            assert rel_err(a, b) < 1e-5
            assert torch.equal(b, c)  # 'auto' on CPU is SDPA
    assert auto.blocks[0].attn._impl(x) == 'sdpa'


def test_output_shapes_and_strides():
    model = tiny_backbone()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 64, 16, 16), (2, 64, 8, 8), (2, 64, 4, 4),
                                              (2, 64, 2, 2)]  # strides 4, 8, 16, 32


def hf_model(patch_size=14, image_size=56):
    config = Dinov2Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=2,
                          patch_size=patch_size, image_size=image_size, layerscale_value=1e-5,
                          attn_implementation='eager')
    return randomise_(Dinov2Model(config)).eval()


def ours_at_input_grid(hf, height, width, **kw):
    """Ours with ``hf``'s weights, ``pos_embed`` stored at the grid of a height x width input.

    The stored position embedding is Hugging Face's own resize of its (square) one for that
    input, so HF and ours see the same numbers while ours resizes nothing at run time.
    """
    p = hf.config.patch_size
    state = hf_dinov2_to_ours(hf.state_dict())
    n = (height // p) * (width // p)
    with torch.no_grad():
        state['pos_embed'] = hf.embeddings.interpolate_pos_encoding(
            torch.zeros(1, 1 + n, 64), height, width).clone()
    ours = DinoVisionTransformer(img_size=(height, width), patch_size=p, embed_dim=64, depth=4,
                                 num_heads=2, attn_impl='sdpa', **kw).eval()
    ours.load_state_dict(state, strict=True)
    assert ours.patch_grid == (height // p, width // p)
    return ours


def hf_maps(hidden_states, out_indices, h, w):
    """The reference pyramid: HF block outputs (patch tokens) as maps, bilinear x4/x2/x1/x0.5."""
    maps = []
    for i, scale in zip(out_indices, (4, 2, 1, 0.5)):
        tokens = hidden_states[i + 1][:, 1:]
        grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
        maps.append(F.interpolate(grid, scale_factor=scale, mode='bilinear',
                                  align_corners=False))
    return maps


@pytest.mark.parametrize('out_indices', [(0, 1, 2, 3), (1, 2, 3, 3)])
def test_pyramid_equals_interpolated_hf_hidden_states(out_indices):
    """Non-square 56x84 input (grid 4x6, the stored one): all four scales by value."""
    hf = hf_model()
    ours = ours_at_input_grid(hf, 56, 84, out_indices=out_indices)
    x = torch.randn(2, 3, 56, 84, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True).hidden_states
        maps = ours(x)
    expected = hf_maps(ref, out_indices, 4, 6)
    assert [tuple(m.shape[-2:]) for m in maps] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    for k, (got, want) in enumerate(zip(maps, expected)):
        assert got.is_contiguous(), f'scale {k} is not contiguous'
        assert rel_err(got, want) < 1e-4, f'scale {k}'
    # the x1 map is block out_indices[2]'s tokens as they are (no resampling at all)
    x1 = ref[out_indices[2] + 1][:, 1:].transpose(1, 2).reshape(2, 64, 4, 6)
    assert rel_err(maps[2], x1) < 1e-4


def test_every_map_is_contiguous():
    """mmcv's MultiScaleDeformableAttention reads raw memory: every returned map must be
    contiguous, also for odd sizes, with padding and in training mode."""
    for model, size in [(tiny_backbone(), (64, 64)), (tiny_backbone(), (70, 90)),
                        (tiny_backbone(pad_to_patch=True), (70, 90))]:
        for mode in (False, True):
            outs = model.train(mode)(torch.randn(2, 3, *size))
            assert all(o.is_contiguous() for o in outs), (size, mode)


def test_non_divisible_input_drops_the_remainder():
    """As the release's conv (kernel = stride = 16): a 70x90 input gives the 4x5 grid of its
    top-left 64x80 crop, and the dropped pixels do not matter."""
    model = tiny_backbone()
    x = torch.randn(1, 3, 70, 90, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        outs = model(x)
        crop = model(x[..., :64, :80])
        noisy = x.clone()
        noisy[..., 64:, :] = 100.0
        noisy[..., :, 80:] = -100.0
        other = model(noisy)
    h, w = 70 // 16, 90 // 16
    assert [tuple(o.shape[-2:]) for o in outs] == [(4 * h, 4 * w), (2 * h, 2 * w), (h, w),
                                                   (h // 2, w // 2)]
    for a, b, c in zip(outs, crop, other):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r'smaller than one 16x16 patch'):
        model(torch.randn(1, 3, 15, 64))


def test_non_divisible_input_matches_hf_dinov2():
    """70x90 with patch 16 against transformers (its conv drops the remainder too); ours has
    the pos embedding stored at the 4x5 grid, so no resize happens on our side."""
    hf = hf_model(patch_size=16, image_size=64)
    ours = ours_at_input_grid(hf, 70, 90, out_indices=(0, 1, 2, 3))
    x = torch.randn(2, 3, 70, 90, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True).hidden_states
        blocks = ours.get_intermediate_layers(x, n=4, norm=False)
        maps = ours(x)
    for i, patch in enumerate(blocks):
        assert rel_err(patch, ref[i + 1][:, 1:]) < 1e-4, f'block {i}'
    for k, (got, want) in enumerate(zip(maps, hf_maps(ref, (0, 1, 2, 3), 4, 5))):
        assert rel_err(got, want) < 1e-4, f'scale {k}'


def test_pad_to_patch_opt_in_pads_right_bottom():
    model = tiny_backbone(pad_to_patch=True)
    assert model.patch_embed.pad_to_patch and 'pad_to_patch=True' in repr(model)
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        outs = model(x)
        padded = model(F.pad(x, (0, 96 - 90, 0, 80 - 70)))
    h, w = math.ceil(70 / 16), math.ceil(90 / 16)
    assert [tuple(o.shape[-2:]) for o in outs] == [(4 * h, 4 * w), (2 * h, 2 * w), (h, w),
                                                   (h // 2, w // 2)]
    for a, b in zip(outs, padded):
        assert torch.equal(a, b)
    cfg = dict(type='DinoVisionTransformer', **TINY, pad_to_patch=True)
    assert SEG_MODELS.build(cfg).patch_embed.pad_to_patch


def test_pos_embed_resize_matches_dinov2_formula():
    model = tiny_backbone()  # stored grid 4x4
    x = torch.zeros(1, 1 + 7 * 5, 64)
    got = model.interpolate_pos_encoding(x, 7, 5)
    stored = model.pos_embed.detach()
    grid = stored[:, 1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, scale_factor=((7 + 0.1) / 4, (5 + 0.1) / 4), mode='bicubic')
    ref = torch.cat([stored[:, :1], ref.permute(0, 2, 3, 1).reshape(1, 35, 64)], dim=1)
    assert torch.allclose(got, ref, atol=1e-6)
    # the +0.1 scale factor samples differently from a plain size= resize
    plain = F.interpolate(grid, size=(7, 5), mode='bicubic', align_corners=False)
    assert not torch.allclose(got[:, 1:], plain.permute(0, 2, 3, 1).reshape(1, 35, 64))
    # native grid: no resize at all
    assert model.interpolate_pos_encoding(torch.zeros(1, 17, 64), 4, 4) is model.pos_embed
    # and the forward uses it: a 112x80 input gives a 7x5 grid
    with torch.no_grad():
        assert model(torch.randn(1, 3, 112, 80))[2].shape[-2:] == (7, 5)


def test_with_cp_same_output_and_gradients():
    x = torch.randn(2, 3, 64, 64)
    results = []
    for with_cp in (False, True):
        model = tiny_backbone(with_cp=with_cp).train()
        calls = []
        model.blocks[1].register_forward_pre_hook(lambda *_: calls.append(1))
        outs = model(x)
        loss = sum((o * torch.linspace(0, 1, o.numel()).view_as(o)).sum() for o in outs)
        loss.backward()
        assert len(calls) == (2 if with_cp else 1)  # checkpointing recomputes in backward
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((outs, grads))
    (outs_a, grads_a), (outs_b, grads_b) = results
    for a, b in zip(outs_a, outs_b):
        assert torch.allclose(a, b, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and 'blocks.3.attn.q.weight' in grads_a
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6), name


def test_parameter_names_and_swiglu_giant_like():
    keys = set(DinoVisionTransformer(**TINY).state_dict())
    for key in ('cls_token', 'pos_embed', 'mask_token', 'patch_embed.proj.weight',
                'blocks.3.norm1.weight', 'blocks.3.attn.q.weight', 'blocks.3.attn.k.bias',
                'blocks.3.attn.v.weight', 'blocks.3.attn.proj.weight', 'blocks.3.ls1.gamma',
                'blocks.3.norm2.bias', 'blocks.3.mlp.fc1.weight', 'blocks.3.mlp.fc2.bias',
                'blocks.3.ls2.gamma', 'norm.weight'):
        assert key in keys
    model = tiny_backbone(ffn_layer='swiglufused', embed_dim=48, num_heads=3)
    hidden = (int(48 * 4 * 2 / 3) + 7) // 8 * 8  # DINOv2's SwiGLUFFNFused rounding: 128
    assert model.blocks[0].mlp.w12.weight.shape == (2 * hidden, 48)
    assert model.blocks[0].mlp.w3.weight.shape == (48, hidden)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64))[0].shape == (1, 48, 16, 16)


def test_arch_presets_and_keywords():
    small = DinoVisionTransformer(arch='small', embed_dim=8, depth=2, num_heads=1,
                                  out_indices=(2, 5, 8, 11))
    assert (small.embed_dim, len(small.blocks), small.blocks[0].attn.num_heads) == (384, 12, 6)
    assert ARCH_SETTINGS['giant'] == dict(embed_dim=1536, depth=40, num_heads=24, mlp_ratio=4.0,
                                          ffn_layer='swiglufused')
    assert ARCH_SETTINGS['large'][
        'embed_dim'] == 1024 and ARCH_SETTINGS['base']['num_heads'] == 12
    model = DinoVisionTransformer(**dict(TINY, drop_path_rate=0.3, drop_path_uniform=True,
                                         block_chunks=2, init_values=1e-3,
                                         lora_cfg=dict(type='sora', r=4)))
    assert [b.drop_path1.drop_prob for b in model.blocks] == [0.3] * 4
    assert model.lora_cfg == dict(type='sora', r=4)
    assert torch.all(model.blocks[0].ls1.gamma == 1e-3)
    ramp = DinoVisionTransformer(**dict(TINY, drop_path_rate=0.3))
    assert [round(b.drop_path1.drop_prob, 6) for b in ramp.blocks] == [0.0, 0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match='out_indices'):
        DinoVisionTransformer(**dict(TINY, out_indices=(1, 2, 3)))
    with pytest.raises(ValueError, match='out of range'):
        DinoVisionTransformer(**dict(TINY, out_indices=(1, 2, 3, 4)))
    with pytest.raises(ValueError, match='arch'):
        DinoVisionTransformer(arch='huge')


def test_registered_and_built_from_config():
    cfg = dict(type='DinoVisionTransformer', **TINY)
    assert type(SEG_MODELS.build(cfg)) is DinoVisionTransformer
    assert type(DET_MODELS.build(cfg)) is DinoVisionTransformer


def test_init_weights_random_and_pretrained(tmp_path):
    source = tiny_backbone(seed=3)
    path = tmp_path / 'backbone.pth'
    save_checkpoint_file(source.state_dict(), path)
    model = DinoVisionTransformer(**TINY, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    fresh = tiny_backbone(seed=4)
    fresh.init_weights()  # no init_cfg: DINOv2's random init again
    assert torch.all(fresh.mask_token == 0)
    assert torch.all(fresh.blocks[0].attn.q.bias == 0)
    assert fresh.blocks[0].attn.q.weight.std().item() == pytest.approx(0.02, rel=0.2)
    assert fresh.cls_token.abs().max().item() < 1e-4
