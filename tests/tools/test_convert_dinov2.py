"""DINOv2 -> SoMA conversion: maths against independent torch calls, the Hugging Face input
path, and the CLI end to end on real files."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import Dinov2Config, Dinov2Model

import soma  # noqa: F401
from soma.models.backbones.convert_dinov2 import (convert_dinov2_checkpoint, convert_dinov2_state_dict,
                                      hf_dinov2_to_ours)
from soma.models.backbones.dinov2 import DinoVisionTransformer
from soma.utils.checkpoint_io import CheckpointError, load_checkpoint_file, save_checkpoint_file

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / 'tools' / 'convert_models' / 'convert_dinov2_sora.py'
CLI_SOMA = REPO / 'tools' / 'convert_models' / 'convert_dinov2_soma.py'
DIM, DEPTH, GRID = 32, 2, 37


def release_state_dict(seed=0):
    """A tiny state dict shaped like dinov2_vit*14_pretrain.pth (fused qkv, 37x37 grid)."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen)

    sd = {'cls_token': r(1, 1, DIM), 'pos_embed': r(1, 1 + GRID * GRID, DIM),
          'mask_token': r(1, DIM), 'patch_embed.proj.weight': r(DIM, 3, 14, 14),
          'patch_embed.proj.bias': r(DIM), 'norm.weight': r(DIM), 'norm.bias': r(DIM)}
    for i in range(DEPTH):
        b = f'blocks.{i}.'
        sd.update({b + 'norm1.weight': r(DIM), b + 'norm1.bias': r(DIM),
                   b + 'attn.qkv.weight': r(3 * DIM, DIM), b + 'attn.qkv.bias': r(3 * DIM),
                   b + 'attn.proj.weight': r(DIM, DIM), b + 'attn.proj.bias': r(DIM),
                   b + 'ls1.gamma': r(DIM), b + 'norm2.weight': r(DIM), b + 'norm2.bias': r(DIM),
                   b + 'mlp.fc1.weight': r(4 * DIM, DIM), b + 'mlp.fc1.bias': r(4 * DIM),
                   b + 'mlp.fc2.weight': r(DIM, 4 * DIM), b + 'mlp.fc2.bias': r(DIM),
                   b + 'ls2.gamma': r(DIM)})
    return sd


def as_hf_file_layout(sd, prefix=''):
    """The same weights under Hugging Face's (transformers 4.x file) names, written by hand."""
    out = {prefix + 'embeddings.cls_token': sd['cls_token'],
           prefix + 'embeddings.mask_token': sd['mask_token'],
           prefix + 'embeddings.position_embeddings': sd['pos_embed'],
           prefix + 'embeddings.patch_embeddings.projection.weight': sd['patch_embed.proj.weight'],
           prefix + 'embeddings.patch_embeddings.projection.bias': sd['patch_embed.proj.bias'],
           prefix + 'layernorm.weight': sd['norm.weight'],
           prefix + 'layernorm.bias': sd['norm.bias']}
    for i in range(DEPTH):
        b, h = f'blocks.{i}.', f'{prefix}encoder.layer.{i}.'
        for t in ('weight', 'bias'):
            q, k, v = sd[f'{b}attn.qkv.{t}'].chunk(3)
            out.update({f'{h}attention.attention.query.{t}': q,
                        f'{h}attention.attention.key.{t}': k,
                        f'{h}attention.attention.value.{t}': v,
                        f'{h}attention.output.dense.{t}': sd[f'{b}attn.proj.{t}'],
                        f'{h}norm1.{t}': sd[f'{b}norm1.{t}'], f'{h}norm2.{t}': sd[f'{b}norm2.{t}'],
                        f'{h}mlp.fc1.{t}': sd[f'{b}mlp.fc1.{t}'],
                        f'{h}mlp.fc2.{t}': sd[f'{b}mlp.fc2.{t}']})
        out[f'{h}layer_scale1.lambda1'] = sd[f'{b}ls1.gamma']
        out[f'{h}layer_scale2.lambda1'] = sd[f'{b}ls2.gamma']
    return out


def tiny_target(height=512, width=512):
    return DinoVisionTransformer(img_size=(height, width), patch_size=16, embed_dim=DIM,
                                 depth=DEPTH, num_heads=2, out_indices=(0, 0, 1, 1))


def test_conversion_maths():
    sd = release_state_dict()
    out = convert_dinov2_state_dict(sd, kernel=16, height=512, width=512)

    ref_kernel = F.interpolate(sd['patch_embed.proj.weight'], size=(16, 16), mode='bicubic',
                               align_corners=False)
    assert torch.equal(out['patch_embed.proj.weight'], ref_kernel)
    grid = sd['pos_embed'][0, 1:].reshape(GRID, GRID, DIM).permute(2, 0, 1)[None]
    ref_pos = F.interpolate(grid, size=(32, 32), mode='bicubic', align_corners=False)
    ref_pos = torch.cat([sd['pos_embed'][:, :1], ref_pos[0].permute(1, 2, 0).reshape(1, -1, DIM)],
                        dim=1)
    assert out['pos_embed'].shape == (1, 1 + 32 * 32, DIM)
    assert torch.equal(out['pos_embed'], ref_pos)
    assert torch.equal(out['pos_embed'][:, 0], sd['pos_embed'][:, 0])  # cls in front

    for i in range(DEPTH):
        for t in ('weight', 'bias'):
            qkv = sd[f'blocks.{i}.attn.qkv.{t}']
            parts = [out[f'blocks.{i}.attn.{n}.{t}'] for n in 'qkv']
            assert all(p.shape[0] == DIM for p in parts)
            assert torch.equal(torch.cat(parts), qkv)
    assert not any('qkv' in k for k in out)
    untouched = [k for k in sd if 'qkv' not in k and k not in ('pos_embed',
                                                                 'patch_embed.proj.weight')]
    assert all(torch.equal(out[k], sd[k]) for k in untouched)
    tiny_target().load_state_dict(out, strict=True)

    # a constant kernel stays constant under bicubic resampling
    const = {**sd, 'patch_embed.proj.weight': torch.full((DIM, 3, 14, 14), 0.25)}
    resized = convert_dinov2_state_dict(const)['patch_embed.proj.weight']
    assert torch.allclose(resized, torch.full_like(resized, 0.25), atol=1e-6)


def test_non_square_target_and_errors():
    out = convert_dinov2_state_dict(release_state_dict(), height=64, width=128)
    assert out['pos_embed'].shape == (1, 1 + 4 * 8, DIM)
    tiny_target(64, 128).load_state_dict(out, strict=True)
    with pytest.raises(ValueError, match='height 500 .* kernel 16'):
        convert_dinov2_state_dict(release_state_dict(), height=500)
    with pytest.raises(CheckpointError, match="missing key 'patch_embed.proj.weight'"):
        convert_dinov2_state_dict({'state_dict': {'conv.weight': torch.zeros(1)}})
    with pytest.raises(ValueError, match="unknown Hugging Face Dinov2 key 'embeddings.register"):
        hf_dinov2_to_ours({'embeddings.register_tokens': torch.zeros(1, 4, DIM)})


@pytest.mark.parametrize('prefix', ['', 'dinov2.'])
def test_hf_layout_gives_identical_output(prefix):
    sd = release_state_dict()
    ours = convert_dinov2_state_dict(sd)
    from_hf = convert_dinov2_state_dict(as_hf_file_layout(sd, prefix))
    assert ours.keys() == from_hf.keys()
    assert all(torch.equal(ours[k], from_hf[k]) for k in ours)


def test_hf_saved_model_folder_and_module_names(tmp_path):
    config = Dinov2Config(hidden_size=DIM, num_hidden_layers=DEPTH, num_attention_heads=2,
                          patch_size=14, image_size=518, use_swiglu_ffn=True)
    hf = Dinov2Model(config)
    hf.save_pretrained(tmp_path / 'hf')  # transformers writes its 4.x file names
    dst = tmp_path / 'converted.pth'
    from_file = convert_dinov2_checkpoint(tmp_path / 'hf', dst, height=64, width=64)
    from_module = convert_dinov2_state_dict(hf_dinov2_to_ours(hf.state_dict()), height=64,
                                            width=64)  # transformers 5.x module names
    assert from_file.keys() == from_module.keys()
    assert all(torch.equal(from_file[k], from_module[k]) for k in from_file)
    model = DinoVisionTransformer(img_size=64, patch_size=16, embed_dim=DIM, depth=DEPTH,
                                  num_heads=2, ffn_layer='swiglufused', out_indices=(0, 0, 1, 1))
    model.load_state_dict(load_checkpoint_file(dst), strict=True)


def run_cli(script, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('script,name', [(CLI, 'converted.pth'),
                                         (CLI_SOMA, 'converted.safetensors')])
def test_cli_end_to_end(tmp_path, script, name):
    src = tmp_path / 'dinov2_vits14_pretrain.pth'
    sd = release_state_dict()
    save_checkpoint_file(sd, src)
    dst = tmp_path / name
    result = run_cli(script, src, dst, '--kernel', 16, '--height', 64, '--width', 96)
    assert result.returncode == 0, result.stderr
    assert 'pos_embed: grid 37x37 -> 4x6' in result.stdout + result.stderr
    written = load_checkpoint_file(dst)
    written = written.get('state_dict', written)
    expected = convert_dinov2_state_dict(sd, kernel=16, height=64, width=96)
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[k], expected[k]) for k in expected)


def test_cli_errors_leave_no_output(tmp_path):
    not_dino = tmp_path / 'resnet.pth'
    save_checkpoint_file({'state_dict': {'conv1.weight': torch.zeros(4, 3, 3, 3)}}, not_dino)
    good = tmp_path / 'dinov2.pth'
    save_checkpoint_file(release_state_dict(), good)
    cases = [((not_dino, tmp_path / 'out1.pth'), "missing key 'patch_embed.proj.weight'"),
             ((good, tmp_path / 'out2.pth', '--height', 500), 'height 500'),
             ((tmp_path / 'nope.pth', tmp_path / 'out3.pth'), 'not found')]
    before = set(os.listdir(tmp_path))
    for args, message in cases:
        result = run_cli(CLI, *args)
        assert result.returncode == 1
        errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
        assert len(errors) == 1 and message in errors[0], result.stderr
        assert result.stderr.strip().splitlines()[-1] == errors[0]
    assert set(os.listdir(tmp_path)) == before  # no output, no temporary file
