"""Official DINOv3 checkpoint -> transformers folder: synthetic checkpoints in Meta's layout
(written here from the facts of DINOV3.md: fused qkv with a masked key bias, storage tokens,
(1, E) mask token, ls*.gamma, fc1/fc2 or w1/w2/w3, RoPE periods), checked against
transformers' own forward of the model they were made from."""
import json
import os
import os.path as osp
import sys

import pytest
import torch
from transformers import DINOv3ViTConfig, DINOv3ViTModel

import soma  # noqa: F401
from soma.models.backbones.convert_dinov3 import convert_dinov3_checkpoint
from soma.models.backbones import HFVisionBackbone

sys.path.insert(0, osp.dirname(__file__))
from _tool_runner import tool_main  # noqa: E402

TOOL = 'convert_models/convert_dinov3.py'


def _hf_model(width=32, depth=3, heads=2, gated=False, base=100.0, registers=4, seed=0):
    config = DINOv3ViTConfig(
        hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
        intermediate_size=2 * width, num_register_tokens=registers, use_gated_mlp=gated,
        hidden_act='silu' if gated else 'gelu', rope_theta=base, layer_norm_eps=1e-5)
    torch.manual_seed(seed)
    model = DINOv3ViTModel(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1 or 'token' in name:  # off their init values
                param.add_(0.1 * torch.randn_like(param))
    return model


def official_state_dict(model):
    """The facebookresearch/dinov3 layout of ``model`` (inverse of the documented mapping)."""
    cfg = model.config
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    width, head_dim = cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads
    out = {
        'cls_token': sd['embeddings.cls_token'],
        'storage_tokens': sd['embeddings.register_tokens'],
        'mask_token': sd['embeddings.mask_token'].reshape(1, width),
        'patch_embed.proj.weight': sd['embeddings.patch_embeddings.weight'],
        'patch_embed.proj.bias': sd['embeddings.patch_embeddings.bias'],
        'norm.weight': sd['norm.weight'], 'norm.bias': sd['norm.bias'],
        # official: periods = base ** (2 * arange(D / 4) / (D / 2)), D = head_dim
        'rope_embed.periods': cfg.rope_theta ** (
            2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2)),
        'local_cls_norm.weight': torch.randn(width),  # training only
        'local_cls_norm.bias': torch.randn(width),
    }
    for i in range(cfg.num_hidden_layers):
        h, o = f'model.layer.{i}.', f'blocks.{i}.'
        att = h + 'attention.'
        out[o + 'attn.qkv.weight'] = torch.cat(
            [sd[att + f'{n}_proj.weight'] for n in 'qkv'])
        # a key bias the official bias_mask (1, 0, 1) zeroes: must not reach the output
        out[o + 'attn.qkv.bias'] = torch.cat(
            [sd[att + 'q_proj.bias'], torch.randn(width), sd[att + 'v_proj.bias']])
        out[o + 'attn.qkv.bias_mask'] = torch.cat(
            [torch.ones(width), torch.zeros(width), torch.ones(width)])
        out[o + 'attn.proj.weight'] = sd[att + 'o_proj.weight']
        out[o + 'attn.proj.bias'] = sd[att + 'o_proj.bias']
        for n in ('norm1', 'norm2'):
            out[o + f'{n}.weight'], out[o + f'{n}.bias'] = (sd[h + f'{n}.weight'],
                                                              sd[h + f'{n}.bias'])
        out[o + 'ls1.gamma'] = sd[h + 'layer_scale1.lambda1']
        out[o + 'ls2.gamma'] = sd[h + 'layer_scale2.lambda1']
        names = ({'w1': 'gate_proj', 'w2': 'up_proj', 'w3': 'down_proj'} if cfg.use_gated_mlp
                 else {'fc1': 'up_proj', 'fc2': 'down_proj'})
        for official, hf in names.items():
            for kind in ('weight', 'bias'):
                out[o + f'mlp.{official}.{kind}'] = sd[h + f'mlp.{hf}.{kind}']
    return out


def _save(tmp_path, state, name='official.pth'):
    path = tmp_path / name
    torch.save(state, path)
    return path


@pytest.mark.parametrize('gated,base', [(False, 100.0), (True, 50.0)])
def test_converted_folder_matches_transformers_forward(tmp_path, gated, base):
    ref = _hf_model(gated=gated, base=base)
    src = _save(tmp_path, official_state_dict(ref))
    out = tmp_path / 'hf'
    assert tool_main(TOOL, src, out) == 0
    assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors']
    model, info = DINOv3ViTModel.from_pretrained(str(out), output_loading_info=True)
    assert not any(info[k] for k in ('missing_keys', 'unexpected_keys', 'mismatched_keys'))
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (32, 3, 2)
    assert (cfg.intermediate_size, cfg.num_register_tokens, cfg.use_gated_mlp) == (64, 4, gated)
    assert cfg.rope_theta == pytest.approx(base) and not cfg.key_bias
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        got = model.eval()(pixel_values=x, output_hidden_states=True)
        exp = ref(pixel_values=x, output_hidden_states=True)
    torch.testing.assert_close(got.last_hidden_state, exp.last_hidden_state)
    for a, b in zip(got.hidden_states, exp.hidden_states):
        torch.testing.assert_close(a, b)
    backbone = HFVisionBackbone(model=str(out), out_indices=(0, 1, 1, 2))
    assert backbone.num_prefix_tokens == 5


def test_arch_of_the_right_size_is_accepted(tmp_path):
    ref = _hf_model(width=384, depth=12, heads=6)  # ViT-S/16
    src = _save(tmp_path, official_state_dict(ref))
    convert_dinov3_checkpoint(src, tmp_path / 'vits16', arch='vits16')
    config = json.loads((tmp_path / 'vits16' / 'config.json').read_text())
    assert (config['hidden_size'], config['num_hidden_layers'],
            config['num_attention_heads']) == (384, 12, 6)


def _refused(capsys, tmp_path, *args, words=()):
    before = set(os.listdir(tmp_path))
    assert tool_main(TOOL, *args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and '\n' not in err, err
    for word in words:
        assert word in err, err
    assert set(os.listdir(tmp_path)) == before  # nothing written, no temporary left
    return err


def test_checkpoint_of_another_size_than_arch(tmp_path, capsys):
    src = _save(tmp_path, official_state_dict(_hf_model()))
    _refused(capsys, tmp_path, src, tmp_path / 'out', '--arch', 'vitl16',
             words=('vitl16', 'width 32', 'depth 3'))


def test_bad_checkpoints(tmp_path, capsys):
    state = official_state_dict(_hf_model())
    no_periods = {k: v for k, v in state.items() if k != 'rope_embed.periods'}
    missing = {k: v for k, v in state.items() if k != 'blocks.1.attn.proj.weight'}
    unknown = dict(state, **{'head.weight': torch.zeros(3)})
    for name, bad, words in [('a.pth', no_periods, ('rope_embed.periods', '--arch')),
                             ('b.pth', missing, ('layer.1.attention.o_proj.weight',)),
                             ('c.pth', unknown, ("'head.weight'",))]:
        src = _save(tmp_path, bad, name)
        _refused(capsys, tmp_path, src, tmp_path / 'out', words=words)
    src = tmp_path / 'a.pth'
    _refused(capsys, tmp_path, tmp_path / 'nope.pth', tmp_path / 'out')
    (tmp_path / 'full').mkdir()
    (tmp_path / 'full' / 'x').write_text('x')
    _refused(capsys, tmp_path, src, tmp_path / 'full', words=('not an empty folder',))
