"""tools/analyze_spectrum.py and tools/benchmark.py on HFVisionBackbone models (tiny folders).

Spectra are checked against numpy's float64 SVD of the transformers model's own weights, and
of trained weights folded here by hand (W_res + s * B @ A)."""
import csv
import json
import os.path as osp
import sys

import numpy as np
import pytest
import torch
import transformers

import soma  # noqa: F401
from soma.apis.spectrum import analyze_spectrum
from soma.models.backbones import HFVisionBackbone
from soma.models.peft_backbone import init_soma_after_weights, wrap_backbone_with_soma
from soma.utils.checkpoint_io import save_checkpoint_file

sys.path.insert(0, osp.dirname(__file__))
from _tool_runner import tool_main, tool_subprocess  # noqa: E402

TINY_SEG = osp.join(osp.dirname(__file__), 'tiny_seg_config.py')
V3_TARGETS = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'up_proj', 'down_proj')
R = 4


def _read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def _share(w, r=R):
    e = np.linalg.svd(np.asarray(w, dtype=np.float64), compute_uv=False) ** 2
    return e[-r:].sum() / e.sum()


@pytest.fixture(scope='module')
def dinov3(tmp_path_factory):
    config = transformers.DINOv3ViTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
        num_register_tokens=4, patch_size=16, pos_embed_rescale=None)
    torch.manual_seed(0)
    model = transformers.DINOv3ViTModel(config).eval()
    folder = str(tmp_path_factory.mktemp('hf') / 'dinov3')
    model.save_pretrained(folder)
    return folder, model


def _hf_config_file(tmp_path, model):
    """tiny_seg_config.py with an HFVisionBackbone on ``model`` (a folder or a dict)."""
    path = tmp_path / 'hf_seg_config.py'
    path.write_text(
        f"_base_ = [{TINY_SEG!r}]\n"
        f"model = dict(\n"
        f"    backbone=dict(_delete_=True, type='HFVisionBackbone', model={model!r},\n"
        f"                  out_indices=[0, 1, 2, 3],\n"
        f"                  lora_cfg=dict(type='soma', r={R}, lora_alpha=8, start_lora_idx=2)),\n"
        f"    decode_head=dict(in_channels=32))\n")
    return str(path)


# ----------------------------------------------------------------------------- spectrum
def test_spectrum_of_a_transformers_folder_matches_numpy(dinov3, tmp_path):
    folder, model = dinov3
    paths = analyze_spectrum(folder, r=R, out_dir=str(tmp_path / 'out'), progress=False)
    rows = _read_csv(paths['layers_csv'])
    weights = {n: m.weight.detach().numpy() for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear)}
    assert sorted(r['layer'] for r in rows) == sorted('hf_model.' + n for n in weights)
    assert len(rows) == 4 * len(V3_TARGETS)
    assert [int(r['block']) for r in rows] == sorted(int(r['block']) for r in rows)
    for row in rows:
        name = row['layer'][len('hf_model.'):]
        assert row['module'] == name.split('.', 3)[3]  # e.g. attention.q_proj
        assert int(row['block']) == int(name.split('.')[2])
        assert float(row['energy_minor_r']) == pytest.approx(_share(weights[name]), rel=1e-9)
    blocks = _read_csv(paths['blocks_csv'])
    assert [int(b['block']) for b in blocks] == [0, 1, 2, 3]


def test_spectrum_of_an_hf_config_is_that_of_its_folder(dinov3, tmp_path):
    folder, _ = dinov3
    config = _hf_config_file(tmp_path, folder)
    assert tool_main('analyze_spectrum.py', config, '--r', R, '--out-dir', tmp_path / 'a') == 0
    analyze_spectrum(folder, r=R, out_dir=str(tmp_path / 'b'), progress=False)
    assert _read_csv(tmp_path / 'a' / 'spectrum_layers.csv') == _read_csv(
        tmp_path / 'b' / 'spectrum_layers.csv')


@pytest.fixture(scope='module')
def trained(dinov3):
    """A SoMA-wrapped tiny DINOv3 whose adapters moved (as training does); its state."""
    folder, _ = dinov3
    backbone = HFVisionBackbone(model=folder, out_indices=(0, 1, 2, 3),
                                lora_cfg=dict(type='soma', r=R, lora_alpha=8, start_lora_idx=2))
    wrapped = wrap_backbone_with_soma(backbone)
    init_soma_after_weights(wrapped)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if 'lora_' in name or (param.requires_grad and name.endswith('.bias')):
                param.add_(0.05 * torch.randn_like(param))
    state = {'backbone.' + k: v.detach().clone() for k, v in wrapped.state_dict().items()}
    return state, wrapped.checkpoint_meta()


@pytest.mark.parametrize('kind', ['full', 'adapter'])
def test_spectrum_of_a_trained_hf_checkpoint(dinov3, trained, tmp_path, kind):
    folder, model = dinov3
    state, meta = trained
    if kind == 'adapter':  # adapters, mask token and target biases; W_res rebuilt by SVD
        state = {k: v for k, v in state.items()
                 if 'lora_' in k or k.endswith('mask_token')
                 or (k.endswith('.bias') and k.rsplit('.', 2)[-2] in V3_TARGETS
                     and int(k.split('.')[5]) >= 2)}
    ckpt = str(tmp_path / 'soma.pth')
    save_checkpoint_file({'state_dict': state, 'meta': {'soma': meta}}, ckpt)
    assert tool_main('analyze_spectrum.py', folder, '--soma_ckpt', ckpt, '--r', R,
                     '--out-dir', tmp_path / 'out') == 0
    rows = _read_csv(tmp_path / 'out' / 'spectrum_layers.csv')
    full, _ = trained
    checked = 0
    for row in rows:
        name = row['layer']
        w0 = dict(model.named_parameters())[name[len('hf_model.'):] + '.weight']
        w0 = w0.detach().double().numpy()
        if int(row['block']) < 2:
            assert row['trained_energy_minor_r'] == ''
            continue
        key = f'backbone.model.{name}'
        a, b = full[key + '.lora_A.weight'].double(), full[key + '.lora_B.weight'].double()
        w_trained = full[key + '.weight'].double().numpy() + 2.0 * (b @ a).numpy()
        assert float(row['trained_energy_minor_r']) == pytest.approx(_share(w_trained),
                                                                     rel=1e-4)
        change = np.linalg.norm(w_trained - w0) / np.linalg.norm(w0)
        assert float(row['rel_change']) == pytest.approx(change, rel=1e-4)
        checked += 1
    assert checked == 2 * len(V3_TARGETS)


def test_spectrum_of_a_siglip2_folder(tmp_path):
    config = transformers.Siglip2VisionConfig(hidden_size=32, num_hidden_layers=3,
                                              num_attention_heads=2, intermediate_size=64,
                                              num_patches=16, vision_use_head=False)
    torch.manual_seed(0)
    model = transformers.Siglip2VisionModel(config)
    model.save_pretrained(str(tmp_path / 'siglip2'))
    paths = analyze_spectrum(str(tmp_path / 'siglip2'), r=R, out_dir=str(tmp_path / 'out'),
                             progress=False)
    rows = _read_csv(paths['layers_csv'])
    assert {r['module'] for r in rows} == {'self_attn.q_proj', 'self_attn.k_proj',
                                           'self_attn.v_proj', 'self_attn.out_proj',
                                           'mlp.fc1', 'mlp.fc2'}
    name, fc2 = next((n, m) for n, m in model.named_modules()
                     if n.endswith('encoder.layers.2.mlp.fc2'))
    weight = fc2.weight.detach().numpy()
    row = next(r for r in rows if r['layer'] == 'hf_model.' + name)
    assert float(row['energy_minor_r']) == pytest.approx(_share(weight), rel=1e-9)


def test_spectrum_cli_folder_without_config_json(tmp_path):
    (tmp_path / 'empty').mkdir()
    res = tool_subprocess('analyze_spectrum.py', tmp_path / 'empty', '--out-dir',
                          tmp_path / 'out')
    assert res.returncode == 1
    assert res.stderr.startswith('error: ') and 'config.json' in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / 'out').exists()


# ----------------------------------------------------------------------------- benchmark
@pytest.mark.parametrize('source', ['folder', 'config.json'])
def test_benchmark_cli_on_an_hf_config(dinov3, tmp_path, source):
    folder, _ = dinov3
    config = _hf_config_file(tmp_path, 'checkpoints/not-downloaded')  # as a real config
    backbone = folder if source == 'folder' else osp.join(folder, 'config.json')
    out = tmp_path / 'b.json'
    assert tool_main('benchmark.py', config, '--backbone', backbone, '--shape', 32, 48,
                     '--repeat', 1, '--warmup', 0, '--out', out) == 0
    result = json.loads(out.read_text())
    assert set(result['fps']) == {'unmerged', 'merged', 'plain'}
    assert result['adapted_layers'] == 2 * len(V3_TARGETS)  # blocks 2, 3
    assert result['merged_same_layers_as_plain'] is True
    assert result['max_abs_diff_merged_vs_unmerged'] < 1e-4
    assert result['shape'] == [32, 48]


def test_benchmark_model_loads_the_folder_weights(dinov3, tmp_path):
    from soma.apis.benchmark import init_benchmark_model, merged_copy
    folder, model = dinov3
    seg = init_benchmark_model(_hf_config_file(tmp_path, 'checkpoints/x'), backbone=folder)
    merged = merged_copy(seg).backbone.hf_model
    for key, value in model.state_dict().items():  # W_res + s * B @ A = the folder's W
        torch.testing.assert_close(merged.state_dict()[key], value, rtol=0, atol=1e-6)


def test_benchmark_cli_hf_config_without_backbone_folder(tmp_path):
    config = _hf_config_file(tmp_path, str(tmp_path / 'missing'))
    res = tool_subprocess('benchmark.py', config, '--shape', 32, 32, '--repeat', 1,
                          '--out', tmp_path / 'b.json')
    assert res.returncode == 1 and 'config.json' in res.stderr
    assert res.stderr.startswith('error: ') and not (tmp_path / 'b.json').exists()
