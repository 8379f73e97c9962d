"""Forward time of the DINOv2 backbone with SDPA vs naive attention (same weights, same run).

    python benchmarks/bench_attention.py [--arch large] [--size 512] [--repeats 3]
        [--out work_dirs/benchmarks/attention.json]

One model is built; its attention modules are switched between ``sdpa`` and ``naive``.
After one warm-up forward per implementation, the repeats are interleaved (sdpa, naive,
sdpa, ...) under ``torch.no_grad()`` so that load changes on a shared machine hit both;
the median is reported. Writes only the json given by ``--out``.
"""
import argparse
import json
import os
import os.path as osp
import platform
import statistics
import time

import torch

IMPLS = ('sdpa', 'naive')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', default='large', help="'small' | 'base' | 'large' | 'giant'")
    parser.add_argument('--size', type=int, default=512, help='square input size')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--out', default='work_dirs/benchmarks/attention.json')
    return parser.parse_args(argv)


def set_attn_impl(model, impl):
    for block in model.blocks:
        block.attn.attn_impl = impl


def time_forward(model, x):
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    outs = model(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, outs


def run(args):
    from soma.models.backbones.dinov2 import DinoVisionTransformer
    torch.manual_seed(0)
    depth = {'giant': 40, 'large': 24}.get(args.arch, 12)
    out_indices = tuple(depth * k // 4 - 1 for k in (1, 2, 3, 4))
    # LayerScale 1 (not 1e-5) so that the sdpa/naive output comparison is not trivially
    # tiny; the timings do not depend on the values
    model = DinoVisionTransformer(arch=args.arch, img_size=args.size, patch_size=16,
                                  init_values=1.0, out_indices=out_indices)
    model = model.eval().to(args.device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    times = {impl: [] for impl in IMPLS}
    outputs = {}
    with torch.no_grad():
        for impl in IMPLS:  # warm-up
            set_attn_impl(model, impl)
            seconds, outputs[impl] = time_forward(model, x)
            print(f'warm-up {impl}: {seconds:.2f} s', flush=True)
        for r in range(args.repeats):
            for impl in IMPLS:
                set_attn_impl(model, impl)
                seconds, _ = time_forward(model, x)
                times[impl].append(seconds)
                print(f'repeat {r + 1}/{args.repeats} {impl}: {seconds:.2f} s', flush=True)
    max_rel_diff = max(((a - b).abs().max() / b.abs().max()).item()
                       for a, b in zip(outputs['naive'], outputs['sdpa']))
    medians = {impl: statistics.median(t) for impl, t in times.items()}
    return {
        'benchmark': 'attention', 'arch': args.arch, 'input': [args.batch, 3, args.size,
                                                               args.size],
        'tokens': 1 + (args.size // 16) ** 2, 'device': args.device,
        'cpu': platform.processor() or platform.machine(), 'torch': torch.__version__,
        'threads': torch.get_num_threads(), 'repeats': args.repeats,
        'seconds': times, 'median_seconds': medians,
        'naive_over_sdpa': medians['naive'] / medians['sdpa'],
        'max_rel_diff_outputs': max_rel_diff,
    }


def main(argv=None):
    args = parse_args(argv)
    result = run(args)
    print(f"\nDINOv2 {args.arch}, input {args.batch}x3x{args.size}x{args.size}, {args.device}, "
          f"{result['threads']} threads, median of {args.repeats}")
    print('| attention | forward (s) |\n|---|---|')
    for impl in IMPLS:
        print(f"| {impl} | {result['median_seconds'][impl]:.3f} |")
    print(f"naive / sdpa = {result['naive_over_sdpa']:.3f}; "
          f"max relative output difference {result['max_rel_diff_outputs']:.2e}")
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    tmp = args.out + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, args.out)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
