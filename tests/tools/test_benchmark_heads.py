"""tools/benchmark.py on every head and backbone kind the README lists (Mask2Former, Semantic
FPN, FCN; DINOv2 and transformers backbones; SoMA, peft and no adapters), with the real
configs shrunk by ``--cfg-options``.

Values are checked against references built here by hand: the plain copy with ``s B @ A``
added to each adapted weight computes the unmerged model; with ``B = 0`` the unmerged model
is the plain one, bit for bit; mmseg's ``EncoderDecoder.predict`` (its own image metas)
gives the same logits as the timed forward.
"""
import json
import os.path as osp
import sys

import pytest
import torch

import soma  # noqa: F401
from soma.apis.benchmark import (benchmark, forward_logits, init_benchmark_model,
                                 merged_copy, plain_copy)
from soma.peft.layer import SoMALinear

sys.path.insert(0, osp.dirname(__file__))
from _tool_runner import tool_main, tool_subprocess  # noqa: E402

ONE_THREAD = True
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TINY_SEG = osp.join(osp.dirname(__file__), 'tiny_seg_config.py')

TINY_DINOV2 = {
    'model.backbone.img_size': 64, 'model.backbone.embed_dim': 64, 'model.backbone.depth': 4,
    'model.backbone.num_heads': 2, 'model.backbone.out_indices': [0, 1, 2, 3],
    'model.backbone.init_cfg': None, 'model.data_preprocessor.size': (64, 64),
    'model.backbone.init_values': 1.0}  # layer scale 1 (not 1e-5): blocks that matter
TINY_M2F = {'model.decode_head.in_channels': [64] * 4,
            'model.decode_head.pixel_decoder.encoder.num_layers': 1,
            'model.decode_head.transformer_decoder.num_layers': 3}
TINY_HF = {'model.backbone.out_indices': [0, 1, 2, 3],
           'model.backbone.lora_cfg.start_lora_idx': 2,
           'model.decode_head.in_channels': [32] * 4,
           'model.decode_head.pixel_decoder.encoder.num_layers': 1,
           'model.decode_head.transformer_decoder.num_layers': 3,
           'model.data_preprocessor.size': (64, 64)}
# config -> (overrides, adapter kind, adapted layers of the tiny model)
CASES = {
    'configs/soma/soma_dinov2-L_mask2former.py': (
        dict(TINY_DINOV2, **TINY_M2F, **{'model.backbone.lora_cfg.start_lora_idx': 2}),
        'soma', 2 * 6),
    'configs/soma/soma_dinov2-L_semfpn.py': (
        dict(TINY_DINOV2, **{'model.backbone.lora_cfg.start_lora_idx': 2,
                             'model.neck.in_channels': [64] * 4}), 'soma', 2 * 6),
    'configs/peft_baselines/lora_dinov2-L_mask2former.py': (
        dict(TINY_DINOV2, **TINY_M2F, **{'model.backbone.peft_cfg.start_lora_idx': 2}),
        'peft', 2 * 6),
    'configs/soma/frozen_dinov2-L_mask2former.py': (dict(TINY_DINOV2, **TINY_M2F), None, 0),
    'configs/soma/soma_hf-dinov2-L_mask2former.py': (TINY_HF, 'soma', 2 * 6),
    'tests/tools/tiny_seg_config.py': ({'model.backbone.init_values': 1.0}, 'soma', 2 * 6),  # FCN
}


@pytest.fixture(scope='module')
def hf_config_json(tmp_path_factory):
    """A tiny transformers Dinov2 ``config.json`` (random weights of that architecture)."""
    path = tmp_path_factory.mktemp('hf') / 'config.json'
    path.write_text(json.dumps(dict(model_type='dinov2', hidden_size=32, num_hidden_layers=4,
                                    num_attention_heads=2, mlp_ratio=2, image_size=56,
                                    patch_size=14)))
    return str(path)


def _build(config, hf_config_json):
    options, _, _ = CASES[config]
    backbone = hf_config_json if 'hf-' in config else None
    torch.manual_seed(0)
    return init_benchmark_model(osp.join(REPO, config), backbone=backbone,
                                cfg_options=dict(options))


def _train_adapters(model):
    """Random adapter weights, as after training (B starts at zero for peft's LoRA)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            if 'lora_' in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _adapted(model):
    """(module, weight, bias, delta = s * B @ A) of every adapted layer, by name."""
    layers = {}
    for name, m in model.backbone.named_modules():
        if isinstance(m, SoMALinear):
            delta = m.scaling * m.lora_B.weight @ m.lora_A.weight
            layers[name] = delta
        elif hasattr(m, 'base_layer') and 'default' in getattr(m, 'lora_A', {}):
            delta = m.scaling['default'] * m.lora_B['default'].weight @ m.lora_A['default'].weight
            layers[name] = delta
    return layers


def _plain_name(name):
    """Name of an adapted layer in the plain copy's backbone (SoMA: without ``model.``)."""
    return name[len('model.'):] if name.startswith('model.') else name


@pytest.mark.parametrize('config', sorted(CASES))
def test_benchmark_values_on_every_head(config, hf_config_json):
    _, kind, n_adapted = CASES[config]
    model = _build(config, hf_config_json)
    result = benchmark(model, shape=(64, 64), repeat=1, warmup=0)
    assert result['adapter'] == kind and result['adapted_layers'] == n_adapted
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    # the timed forward is mmseg's whole inference: predict() with its own metas agrees
    from mmseg.structures import SegDataSample
    samples = [SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64),
                                           pad_shape=(64, 64))) for _ in range(2)]
    with torch.inference_mode():
        logits = forward_logits(model, inputs)
        predicted = model.predict(inputs, samples)
    for i, sample in enumerate(predicted):
        torch.testing.assert_close(sample.seg_logits.data, logits[i], rtol=0, atol=1e-6)
    if kind is None:
        assert set(result['fps']) == {'plain'} and 'ratio_merged_vs_plain' not in result
        with pytest.raises(ValueError, match='no adapters'):
            merged_copy(model)
        return
    assert set(result['fps']) == {'unmerged', 'merged', 'plain'}
    assert result['merged_same_layers_as_plain'] is True

    # B = 0: the adapters add exactly nothing, the plain copy is the unmerged model
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            if 'lora_B' in name:
                p.zero_()
    plain = plain_copy(model)  # copies made outside inference mode, as benchmark() does
    with torch.inference_mode():
        assert torch.equal(forward_logits(plain, inputs), forward_logits(model, inputs))

    # trained adapters: plain + s B @ A (added here by hand) = unmerged = merged
    _train_adapters(model)
    deltas = _adapted(model)
    assert len(deltas) == n_adapted
    by_hand, plain, merged = plain_copy(model), plain_copy(model), merged_copy(model)
    with torch.no_grad():
        for name, delta in deltas.items():
            by_hand.backbone.get_submodule(_plain_name(name)).weight.add_(delta)
    with torch.inference_mode():
        # the backbone features, where the adapters act (a random Mask2Former head is
        # nearly flat), and the logits
        unmerged = model.extract_feat(inputs)
        for copy in (by_hand, merged):
            for got, want in zip(copy.extract_feat(inputs), unmerged):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(forward_logits(copy, inputs),
                                       forward_logits(model, inputs), rtol=1e-4, atol=1e-5)
        change = max((a - b).abs().max() for a, b in zip(plain.extract_feat(inputs), unmerged))
    assert change > 1e-2  # the trained adapters do change the features
    result = benchmark(model, shape=(64, 64), repeat=1, warmup=0)
    assert result['max_abs_diff_merged_vs_unmerged'] < 1e-4
    assert result['max_abs_diff_plain_vs_unmerged'] > 0


def _options(config):
    options, _, _ = CASES[config]
    return [f'{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}'.replace('null', 'None')
            for k, v in options.items()]


@pytest.mark.parametrize('config', ['configs/soma/soma_dinov2-L_mask2former.py',
                                    'configs/soma/frozen_dinov2-L_mask2former.py'])
def test_benchmark_cli_on_mask2former(config, tmp_path, capsys):
    out = tmp_path / 'b.json'
    argv = [osp.join(REPO, config), '--shape', 64, 64, '--repeat', 1, '--warmup', 0,
            '--out', out, '--cfg-options', *_options(config)]
    assert tool_main('benchmark.py', *argv) == 0
    result = json.loads(out.read_text())
    assert set(result['fps']) == ({'unmerged', 'merged', 'plain'} if 'soma_' in config
                                  else {'plain'})
    assert 'written to' in capsys.readouterr().out


def test_benchmark_cli_bad_input_is_one_line(tmp_path):
    res = tool_subprocess('benchmark.py', TINY_SEG, '--repeat', 0, '--out', tmp_path / 'b.json')
    assert res.returncode == 1 and res.stderr.strip() == 'error: --repeat must be >= 1, got 0'
    res = tool_subprocess('benchmark.py', osp.join(REPO, 'DGOD', 'configs', 'demo',
                                                   'soma_tiny_codetr_demo.py'),
                          '--out', tmp_path / 'b.json')
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
    assert res.stderr.startswith('error: ') and 'mmdet' in res.stderr
    assert not (tmp_path / 'b.json').exists()
