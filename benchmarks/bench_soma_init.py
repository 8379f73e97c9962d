"""SoMA initialisation of ViT-L (96 layers): ours vs one float32 ``torch.linalg.svd`` per layer.

    python benchmarks/bench_soma_init.py [--blocks 16] [--r 16] [--weights spiked|gaussian]
        [--workers 1] [--check all|none|N] [--out work_dirs/benchmarks/soma_init.json]

ViT-L's adapted layers (blocks 8..23): per block q, k, v, proj (1024x1024), fc1 (4096x1024),
fc2 (1024x4096). Weights are random with a trained-like spectrum (``spiked``: a Gaussian
bulk of std 0.02 plus 32 decaying low-rank spikes, so the spectrum has outliers over a
Marchenko-Pastur bulk) or plain DINOv2 init (``gaussian``, trunc-normal 0.02 like an untrained
``DinoVisionTransformer``). For each block, the original method (``torch.linalg.svd(W,
full_matrices=False)`` in float32, what the release's ``sora_init`` runs per layer) and ours
(``SoMALinear.init_adapter``: float64 Gram matrix, partial eigensolver, Rayleigh-Ritz, then
A, B and W_res) are timed back to back, so that load changes on a shared machine hit both; the json
gives the ratio of the sums and the median of the per-block ratios (less sensitive to
load bursts, which slow the multi-threaded float32 SVD more than ours).
Accuracy: ``s*B@A`` and the residual against a float64 exact SVD, relative Frobenius error
(``--check N`` checks every N-th layer, the float64 SVD being the slowest part).
Writes only the json given by ``--out``.
"""
import argparse
import json
import os.path as osp
import platform
import statistics
import sys
import time

import torch
from torch import nn

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from soma.peft import SoMALinear  # noqa: E402

EMBED, HIDDEN = 1024, 4096
BLOCK_LAYERS = [('attn.q', (EMBED, EMBED)), ('attn.k', (EMBED, EMBED)),
                ('attn.v', (EMBED, EMBED)), ('attn.proj', (EMBED, EMBED)),
                ('mlp.fc1', (HIDDEN, EMBED)), ('mlp.fc2', (EMBED, HIDDEN))]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--blocks', type=int, default=16, help='adapted blocks (ViT-L: 16)')
    parser.add_argument('--r', type=int, default=16)
    parser.add_argument('--weights', choices=['spiked', 'gaussian'], default='spiked')
    parser.add_argument('--init', default='sora', help="lora_weight_init of ours")
    parser.add_argument('--first-eigen', action='store_true')
    parser.add_argument('--workers', type=int, default=1,
                        help='threads over the layers of a block for ours')
    parser.add_argument('--check', default='all',
                        help="accuracy check: 'all', 'none' or every N-th layer")
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default='work_dirs/benchmarks/soma_init.json')
    return parser.parse_args(argv)


def make_weight(shape, kind, gen):
    m, n = shape
    if kind == 'gaussian':
        return torch.nn.init.trunc_normal_(torch.empty(m, n), std=0.02, generator=gen)
    w = torch.randn(m, n, generator=gen) * 0.02
    strengths = 2.0 * torch.arange(1, 33, dtype=torch.float32) ** -0.7
    p = torch.randn(m, 32, generator=gen) / m ** 0.5
    q = torch.randn(n, 32, generator=gen) / n ** 0.5
    return w + (p * strengths) @ q.T


def soma_layer(weight, r, init, first_eigen):
    base = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device='meta')
    base.weight = nn.Parameter(weight.clone(), requires_grad=False)
    return SoMALinear.from_linear(base, r=r, lora_alpha=r, lora_weight_init=init,
                                  first_eigen=first_eigen)


def accuracy(weight, layer, r, first_eigen):
    """Relative Frobenius errors of s*B@A and of W_res against a float64 exact SVD."""
    w64 = weight.double()
    u, s, vh = torch.linalg.svd(w64, full_matrices=False)
    sl = slice(0, r) if first_eigen else slice(s.numel() - r, s.numel())
    part = (u[:, sl] * s[sl]) @ vh[sl]
    b, a = layer.lora_B.weight.detach().double(), layer.lora_A.weight.detach().double()
    ours = layer.scaling * b @ a
    residual = w64 - part
    return (float((ours - part).norm() / part.norm()),
            float((layer.weight.detach().double() - residual).norm() / residual.norm()))


def run(args):
    from concurrent.futures import ThreadPoolExecutor
    gen = torch.Generator().manual_seed(args.seed)
    check_every = {'all': 1, 'none': 0}.get(args.check) or int(args.check)
    base_total = ours_total = 0.0
    errors, per_shape, per_block = [], {}, []
    n_layer = 0
    start = time.perf_counter()
    for block in range(args.blocks):
        weights = [make_weight(shape, args.weights, gen) for _, shape in BLOCK_LAYERS]
        t0 = time.perf_counter()
        for w in weights:
            torch.linalg.svd(w, full_matrices=False)
        t_base = time.perf_counter() - t0
        layers = [soma_layer(w, args.r, args.init, args.first_eigen) for w in weights]
        t0 = time.perf_counter()
        if args.workers > 1:
            with ThreadPoolExecutor(args.workers) as pool:
                list(pool.map(lambda layer: layer.init_adapter(), layers))
        else:
            for layer in layers:
                layer.init_adapter()
        t_ours = time.perf_counter() - t0
        base_total += t_base
        ours_total += t_ours
        per_block.append(dict(original_s=round(t_base, 3), ours_s=round(t_ours, 3),
                              speedup=round(t_base / t_ours, 2)))
        for (name, shape), w, layer in zip(BLOCK_LAYERS, weights, layers):
            if check_every and n_layer % check_every == 0:
                err_ba, err_res = accuracy(w, layer, args.r, args.first_eigen)
                errors.append(dict(layer=f'blocks.{8 + block}.{name}', shape=list(shape),
                                   rel_err_BA=err_ba, rel_err_residual=err_res))
                key = 'x'.join(map(str, shape))
                stats = per_shape.setdefault(key, dict(max_rel_err_BA=0.0,
                                                       max_rel_err_residual=0.0))
                stats['max_rel_err_BA'] = max(stats['max_rel_err_BA'], err_ba)
                stats['max_rel_err_residual'] = max(stats['max_rel_err_residual'], err_res)
            n_layer += 1
        print(f'block {block + 1}/{args.blocks}: original {t_base:.2f} s, ours {t_ours:.2f} s '
              f'(running speedup x{base_total / ours_total:.1f})', flush=True)
    max_ba = max((e['rel_err_BA'] for e in errors), default=None)
    max_res = max((e['rel_err_residual'] for e in errors), default=None)
    return dict(
        benchmark='soma_init', weights=args.weights, r=args.r, init=args.init,
        first_eigen=args.first_eigen, workers=args.workers, layers=n_layer,
        layer_shapes={name: list(shape) for name, shape in BLOCK_LAYERS},
        original='torch.linalg.svd(W float32, full_matrices=False) per layer',
        ours='SoMALinear.init_adapter (float64 Gram + partial eigh + Rayleigh-Ritz, A, B, W_res)',
        original_total_s=round(base_total, 3), ours_total_s=round(ours_total, 3),
        speedup=round(base_total / ours_total, 2),
        median_block_speedup=statistics.median(b['speedup'] for b in per_block),
        per_block=per_block,
        max_rel_err_BA=max_ba, max_rel_err_residual=max_res, checked_layers=len(errors),
        per_shape=per_shape, wall_s=round(time.perf_counter() - start, 1),
        torch=torch.__version__, threads=torch.get_num_threads(),
        machine=platform.machine(), python=platform.python_version())


def main(argv=None):
    args = parse_args(argv)
    result = run(args)
    from soma.utils.atomic import atomic_output
    with atomic_output(args.out) as tmp:
        with open(tmp, 'w') as f:
            json.dump(result, f, indent=2)
    print(json.dumps({k: result[k] for k in ('layers', 'original_total_s', 'ours_total_s',
                                             'speedup', 'median_block_speedup',
                                             'max_rel_err_BA', 'max_rel_err_residual')}))
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
