"""Spectrum analysis (checked against numpy float64 SVD) and the merged/unmerged benchmark."""
import csv
import json
import os
import os.path as osp
import sys

import numpy as np
import pytest
import torch

from soma import checkpoints as ck
from soma.apis.spectrum import analyze_spectrum
from soma.utils.checkpoint_io import save_checkpoint_file

sys.path.insert(0, osp.dirname(__file__))
from _tool_runner import tool_main, tool_subprocess  # noqa: E402
from _ckpt_fixtures import (TARGETS, converted_backbone,  # noqa: E402
                            release_full_checkpoint, target_layers)

TINY_CONFIG = osp.join(osp.dirname(__file__), 'tiny_seg_config.py')
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def _np_minor_share(w, r):
    s = np.linalg.svd(np.asarray(w, dtype=np.float64), compute_uv=False)
    e = s ** 2
    return e[-r:].sum() / e.sum(), e[-r:].sum(), e.sum()


def _is_png(path):
    with open(path, 'rb') as f:
        return f.read(8) == PNG_MAGIC


def test_spectrum_energy_shares_match_numpy(tmp_path):
    backbone = converted_backbone()
    save_checkpoint_file(backbone, str(tmp_path / 'converted.pth'))
    r = 4
    paths = analyze_spectrum(str(tmp_path / 'converted.pth'), r=r, out_dir=str(tmp_path / 'out'),
                             progress=False)
    assert all(osp.isfile(p) for p in paths.values())
    assert _is_png(paths['spectrum_png']) and _is_png(paths['energy_png'])
    rows = _read_csv(paths['layers_csv'])
    layers = target_layers(backbone, start=0)
    assert [row['layer'] for row in rows] == sorted(
        layers, key=lambda n: (int(n.split('.')[1]), n))
    pooled = {}
    for row in rows:
        w = backbone[row['layer'] + '.weight'].numpy()
        share, minor, total = _np_minor_share(w, r)
        assert float(row['energy_minor_r']) == pytest.approx(share, rel=1e-9)
        s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
        assert float(row['energy_top_r']) == pytest.approx((s[:r] ** 2).sum() / (s ** 2).sum(),
                                                           rel=1e-9)
        assert row['trained_energy_minor_r'] == ''
        p = pooled.setdefault(int(row['block']), [0.0, 0.0])
        p[0] += minor
        p[1] += total
    blocks = _read_csv(paths['blocks_csv'])
    assert [int(b['block']) for b in blocks] == [0, 1, 2, 3]
    for b in blocks:
        minor, total = pooled[int(b['block'])]
        assert float(b['energy_minor_r']) == pytest.approx(minor / total, rel=1e-9)
        assert int(b['layers']) == len(TARGETS)


def test_spectrum_of_a_trained_release_adapter(tmp_path):
    backbone = converted_backbone()
    r = 4
    adapter = ck.extract_soma_weights(release_full_checkpoint(backbone, r=r, ema=False))
    # the recorded adapter config sets the scale s = lora_alpha / r = 2
    adapter['meta']['soma'] = {'semantics': 'release', 'lora_cfg': dict(
        r=r, lora_alpha=8, target_modules=list(TARGETS), start_lora_idx=2)}
    save_checkpoint_file(adapter, str(tmp_path / 'adapter.pth'))
    save_checkpoint_file(backbone, str(tmp_path / 'converted.pth'))
    paths = analyze_spectrum(str(tmp_path / 'converted.pth'), str(tmp_path / 'adapter.pth'),
                             r=r, out_dir=str(tmp_path / 'out'), progress=False)
    rows = {row['layer']: row for row in _read_csv(paths['layers_csv'])}
    sd = adapter['state_dict']
    for name, row in rows.items():
        if int(row['block']) < 2:
            assert row['trained_energy_minor_r'] == ''
            continue
        a = sd[f'backbone.model.{name}.lora_A.weight'].double().numpy()
        b = sd[f'backbone.model.{name}.lora_B.weight'].double().numpy()
        w = backbone[f'{name}.weight'].double().numpy()
        w_trained = w + 2.0 * b @ a
        share, _, _ = _np_minor_share(w_trained, r)
        assert float(row['trained_energy_minor_r']) == pytest.approx(share, rel=1e-5)
        change = np.linalg.norm(w_trained - w) / np.linalg.norm(w)
        assert float(row['rel_change']) == pytest.approx(change, rel=1e-5)


def test_spectrum_cli_refuses_bad_rank_without_outputs(tmp_path):
    save_checkpoint_file(converted_backbone(), str(tmp_path / 'converted.pth'))
    out = tmp_path / 'out'
    res = tool_subprocess('analyze_spectrum.py', tmp_path / 'converted.pth', '--r', '100',
                          '--out-dir', out)
    assert res.returncode == 1
    assert res.stderr.startswith('error: ') and 'r=100' in res.stderr
    assert not out.exists() or not os.listdir(out)


# ----------------------------------------------------------------------------- benchmark
def test_benchmark_writes_three_fps_figures(tmp_path):
    from soma.apis.benchmark import benchmark, merged_copy
    from soma.apis.inference import init_model
    from soma.peft.layer import SoMALinear
    torch.manual_seed(0)
    model = init_model(TINY_CONFIG)
    merged = merged_copy(model)
    assert not any(isinstance(m, SoMALinear) for m in merged.modules())
    assert sum(isinstance(m, torch.nn.Linear) for m in merged.backbone.modules()) == 4 * 6
    out = tmp_path / 'bench' / 'result.json'
    result = benchmark(model, shape=(64, 64), repeat=2, warmup=1, out=str(out))
    with open(out) as f:
        saved = json.load(f)
    assert set(saved['fps']) == {'unmerged', 'merged', 'plain'}
    assert all(v > 0 for v in saved['fps'].values())
    assert saved['ratio_merged_vs_plain'] == pytest.approx(
        saved['fps']['merged'] / saved['fps']['plain'])
    assert saved["adapted_layers"] == 2 * 6
    assert saved['merged_same_layers_as_plain'] is True
    assert all(len(t) == 2 for t in saved['seconds_per_forward'].values())
    assert result['max_abs_diff_merged_vs_unmerged'] < 1e-4


def test_benchmark_cli(tmp_path):
    out = tmp_path / 'b.json'
    assert tool_main('benchmark.py', TINY_CONFIG, '--shape', '64', '64', '--repeat', '1',
                     '--warmup', '0', '--out', out) == 0
    assert set(json.loads(out.read_text())['fps']) == {'unmerged', 'merged', 'plain'}


def test_spectrum_of_a_rank4_adapter_without_meta_uses_scale_one(tmp_path):
    """A released adapter records no config: rank from the shapes, lora_alpha = r, s = 1."""
    backbone = converted_backbone()
    r = 4
    adapter = ck.extract_soma_weights(release_full_checkpoint(backbone, r=r, ema=False))
    adapter.pop('meta')
    save_checkpoint_file(adapter, str(tmp_path / 'adapter.pth'))
    save_checkpoint_file(backbone, str(tmp_path / 'converted.pth'))
    assert tool_main('analyze_spectrum.py', tmp_path / 'converted.pth', '--soma_ckpt',
                     tmp_path / 'adapter.pth', '--r', r, '--out-dir', tmp_path / 'out') == 0
    rows = {row['layer']: row for row in _read_csv(tmp_path / 'out' / 'spectrum_layers.csv')}
    sd = adapter['state_dict']
    checked = 0
    for name, row in rows.items():
        if int(row['block']) < 2:
            continue
        a = sd[f'backbone.model.{name}.lora_A.weight'].double().numpy()
        b = sd[f'backbone.model.{name}.lora_B.weight'].double().numpy()
        w = backbone[f'{name}.weight'].double().numpy()
        w_trained = w + b @ a
        share, _, _ = _np_minor_share(w_trained, r)
        assert float(row['trained_energy_minor_r']) == pytest.approx(share, rel=1e-5)
        change = np.linalg.norm(b @ a) / np.linalg.norm(w)
        assert float(row['rel_change']) == pytest.approx(change, rel=1e-5)
        checked += 1
    assert checked == 2 * len(TARGETS)
