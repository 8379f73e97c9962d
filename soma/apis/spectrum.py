"""Singular-value spectra of the adapted layers of a backbone (and of a trained model).

The backbone: a converted DINOv2 checkpoint (layers ``blocks.<i>.<module>``), or a
transformers folder of a model :class:`~soma.models.backbones.HFVisionBackbone` wraps
(DINOv3, DINOv2, SigLIP2; layers named as in the transformers model, e.g.
``model.layer.<i>.attention.q_proj``, the family's linears by default), or an mmengine config
whose ``model.backbone`` is an ``HFVisionBackbone`` on such a folder.

For every target linear the singular values are computed in float64
and the share of energy (sum of squared singular values) held by the minor ``r`` components
is reported, per layer and per block (pooled over the block's layers). With a trained SoMA
checkpoint, the same is reported for the effective trained weight ``weight + s * B @ A``
(the adapter merged with the backbone, :mod:`soma.checkpoints`), plus the relative change
``||W_trained - W_pretrained||_F / ||W_pretrained||_F``.

Outputs in ``out_dir``: ``spectrum_layers.csv``, ``spectrum_blocks.csv``, ``spectrum.png``
(singular values per module type, one curve per block) and ``minor_energy.png``.
"""
import csv
import os
import os.path as osp
import re

from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.utils import ProgressBar

from soma.checkpoints import (fold_adapters, hf_folder_of, merge_soma_weights,
                              read_converted_backbone)
from soma.checkpoints.layout import BACKBONE_PREFIX, CheckpointLike, Device, PathLike
from soma.checkpoints.soma_adapter import adapter_ranks
from soma.models.backbones.dinov2 import DinoVisionTransformer
from soma.models.backbones.hf_vision import hf_backbone_weights
from soma.peft.config import DEFAULT_TARGET_MODULES
from soma.utils.atomic import atomic_output

__all__ = ['singular_values', 'minor_energy_share', 'layer_spectra', 'analyze_spectrum']

LAYER_FIELDS = ['layer', 'block', 'module', 'out_features', 'in_features', 'r',
                'energy_minor_r', 'energy_top_r', 'trained_energy_minor_r', 'rel_change']
BLOCK_FIELDS = ['block', 'layers', 'energy_minor_r', 'trained_energy_minor_r']


def singular_values(weight: torch.Tensor) -> np.ndarray:
    """Singular values of a 2-D weight, float64, descending (numpy array)."""
    return torch.linalg.svdvals(weight.detach().to('cpu', torch.float64)).numpy()


def minor_energy_share(s: np.ndarray, r: int) -> float:
    """Share of ``sum(s**2)`` held by the ``r`` smallest singular values."""
    energy = np.asarray(s, dtype=np.float64) ** 2
    return float(np.sort(energy)[:r].sum() / energy.sum())


def _layer_re(layers_pattern):
    return re.compile(rf'((?:.*\.)?{layers_pattern}\.(\d+)\.(.+))\.weight')


def _target_layers(state_dict, target_modules,
                   layers_pattern=DinoVisionTransformer.layers_pattern):
    """``{layer name: weight}`` of the target linears in ``<layers_pattern>.<i>.``, in block
    order."""
    layers = {}
    layer_re = _layer_re(layers_pattern)
    for key, value in state_dict.items():
        m = layer_re.fullmatch(key)
        if m is None or value.ndim != 2:
            continue
        name, module = m.group(1), m.group(3)
        if isinstance(target_modules, str):
            hit = re.fullmatch(target_modules, name) is not None
        else:
            hit = any(module == t or module.endswith(f'.{t}') for t in target_modules)
        if hit:
            layers[name] = (int(m.group(2)), module, value)
    return dict(sorted(layers.items(), key=lambda kv: (kv[1][0], kv[0])))


def layer_spectra(state_dict: Dict[str, torch.Tensor], r: int = 16,
                  target_modules: Union[str, Sequence[str]] = DEFAULT_TARGET_MODULES,
                  trained: Optional[Dict[str, torch.Tensor]] = None, progress: bool = True,
                  layers_pattern: str = DinoVisionTransformer.layers_pattern
                  ) -> Tuple[List[dict], dict]:
    """Per-layer rows (see ``LAYER_FIELDS``) and singular values.

    ``state_dict``: plain converted DINOv2 keys (or a transformers model's, with its
    ``layers_pattern``); ``trained``: ``{layer name: trained effective weight}`` (optional).
    Returns ``(rows, spectra)`` with ``spectra[name] = (s_pretrained, s_trained or None)``.
    """
    layers = _target_layers(state_dict, target_modules, layers_pattern)
    if not layers:
        targets = (target_modules if isinstance(target_modules, str)
                   else '{' + ','.join(target_modules) + '}')
        raise ValueError(f'no target layers ({layers_pattern}.<i>.{targets}.weight) in the '
                         f'checkpoint')
    bar = ProgressBar(len(layers)) if progress else None
    rows, spectra = [], {}
    for name, (block, module, weight) in layers.items():
        if r > min(weight.shape):
            raise ValueError(f'r={r} exceeds the rank of {name}.weight {tuple(weight.shape)}')
        s = singular_values(weight)
        row = dict(layer=name, block=block, module=module,
                   out_features=weight.shape[0], in_features=weight.shape[1], r=r,
                   energy_minor_r=minor_energy_share(s, r),
                   energy_top_r=float((s[:r] ** 2).sum() / (s ** 2).sum()),
                   trained_energy_minor_r='', rel_change='')
        s_trained = None
        if trained is not None and name in trained:
            w_t = trained[name].detach().to('cpu', torch.float64)
            w_p = weight.detach().to('cpu', torch.float64)
            s_trained = singular_values(w_t)
            row['trained_energy_minor_r'] = minor_energy_share(s_trained, r)
            row['rel_change'] = float(torch.linalg.norm(w_t - w_p) / torch.linalg.norm(w_p))
        rows.append(row)
        spectra[name] = (s, s_trained)
        if bar is not None:
            bar.update()
    if bar is not None:
        print()
    return rows, spectra


def block_rows(rows: List[dict], spectra: dict, r: int) -> List[dict]:
    """Per-block energy share, pooled: sum of minor energies / sum of total energies."""
    blocks = {}
    for row in rows:
        s, s_t = spectra[row['layer']]
        b = blocks.setdefault(row['block'], dict(block=row['block'], layers=0, minor=0.0,
                                                 total=0.0, t_minor=0.0, t_total=0.0))
        b['layers'] += 1
        b['minor'] += float(np.sort(s ** 2)[:r].sum())
        b['total'] += float((s ** 2).sum())
        if s_t is not None:
            b['t_minor'] += float(np.sort(s_t ** 2)[:r].sum())
            b['t_total'] += float((s_t ** 2).sum())
    return [dict(block=b['block'], layers=b['layers'], energy_minor_r=b['minor'] / b['total'],
                 trained_energy_minor_r=(b['t_minor'] / b['t_total']) if b['t_total'] else '')
            for b in sorted(blocks.values(), key=lambda b: b['block'])]


def _write_csv(path, fields, rows):
    with atomic_output(path) as tmp:
        with open(tmp, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


def _plot(rows, spectra, blocks, r, spectrum_png, energy_png):
    import matplotlib  # heavy, for the figures only
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    modules = sorted({row['module'] for row in rows})
    n_blocks = max(row['block'] for row in rows) + 1
    cmap = plt.get_cmap('viridis')
    fig, axes = plt.subplots(1, len(modules), figsize=(3.2 * len(modules), 3.2), squeeze=False)
    for ax, module in zip(axes[0], modules):
        for row in rows:
            if row['module'] != module:
                continue
            s = spectra[row['layer']][0]
            color = cmap(row['block'] / max(n_blocks - 1, 1))
            ax.semilogy(np.arange(1, len(s) + 1), s, color=color, lw=0.8)
        ax.axvspan(len(s) - r + 1, len(s), color='tab:red', alpha=0.15, label=f'minor {r}')
        ax.set_title(module)
        ax.set_xlabel('index')
    axes[0][0].set_ylabel('singular value')
    axes[0][0].legend(loc='lower left', fontsize=7)
    fig.tight_layout()
    mappable = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, max(n_blocks - 1, 1)))
    fig.colorbar(mappable, ax=axes[0].tolist(), label='block', fraction=0.02, pad=0.01)
    with atomic_output(spectrum_png) as tmp:
        fig.savefig(tmp, format='png', dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = [b['block'] for b in blocks]
    ax.plot(xs, [b['energy_minor_r'] for b in blocks], 'o-', label='pretrained')
    trained = [b['trained_energy_minor_r'] for b in blocks]
    if any(t != '' for t in trained):
        ax.plot([x for x, t in zip(xs, trained) if t != ''], [t for t in trained if t != ''],
                's--', label='trained')
    ax.set_xlabel('block')
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_ylabel(f'energy share of minor {r}')
    ax.set_yscale('log')
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(energy_png) as tmp:
        fig.savefig(tmp, format='png', dpi=100)
    plt.close(fig)


def analyze_spectrum(converted: CheckpointLike, soma_ckpt: Optional[CheckpointLike] = None,
                     r: int = 16, out_dir: PathLike = 'work_dirs/spectrum',
                     target_modules: Optional[Union[str, Sequence[str]]] = None,
                     progress: bool = True, device: Device = 'cpu') -> Dict[str, str]:
    """Compute the spectra, write CSVs and PNGs to ``out_dir``; returns the output paths.

    ``converted``: converted DINOv2 file (or state dict), a transformers folder, or a config
    with an HFVisionBackbone on one (see the module docstring); ``soma_ckpt``: an adapter (or
    full) SoMA checkpoint whose effective trained weights are analysed too, folded with the
    scale :func:`soma.checkpoints.fold_adapters` uses (the recorded adapter config; for a
    released DINOv2 checkpoint without one, the release's ``lora_alpha = r``, see
    :func:`soma.checkpoints.release_adapter_config`). ``target_modules``: default the
    backbone's (DINOv2: ``q, k, v, proj, fc1, fc2``; HF: every linear of the family).
    """
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f'r (--r) must be an integer >= 1, got {r!r}')
    folder = hf_folder_of(converted)
    if folder is not None:
        backbone, family = hf_backbone_weights(folder)
        layers_pattern = family.layers_pattern
        target_modules = target_modules or list(family.target_modules)
    else:
        backbone = read_converted_backbone(converted)
        layers_pattern = DinoVisionTransformer.layers_pattern
        target_modules = target_modules or DEFAULT_TARGET_MODULES
    trained = None
    if soma_ckpt is not None:
        merged = merge_soma_weights(backbone, soma_ckpt, device=device)
        folded = fold_adapters(merged)['state_dict']
        trained = {n: folded[f'{BACKBONE_PREFIX}{n}.weight']
                   for n in adapter_ranks(merged['state_dict'])}
    rows, spectra = layer_spectra(backbone, r, target_modules, trained, progress,
                                  layers_pattern)
    blocks = block_rows(rows, spectra, r)
    os.makedirs(out_dir, exist_ok=True)
    paths = dict(layers_csv=osp.join(out_dir, 'spectrum_layers.csv'),
                 blocks_csv=osp.join(out_dir, 'spectrum_blocks.csv'),
                 spectrum_png=osp.join(out_dir, 'spectrum.png'),
                 energy_png=osp.join(out_dir, 'minor_energy.png'))
    _plot(rows, spectra, blocks, r, paths['spectrum_png'], paths['energy_png'])
    _write_csv(paths['layers_csv'], LAYER_FIELDS, rows)
    _write_csv(paths['blocks_csv'], BLOCK_FIELDS, blocks)
    return paths
