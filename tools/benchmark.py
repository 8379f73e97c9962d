"""Inference FPS of a SoMA segmentor: adapters unmerged vs merged vs the plain backbone.

    python tools/benchmark.py CONFIG [CHECKPOINT] [--backbone CONVERTED] \
        [--shape 512 512] [--batch 1] [--repeat 20] [--warmup 3] [--device cuda] \
        [--out work_dirs/benchmark.json]

Without CHECKPOINT the model has random weights (speed does not depend on them). Merged
inference should match the plain backbone (``ratio_merged_vs_plain`` ~1.0). With an
HFVisionBackbone config (DINOv3, DINOv2, SigLIP2 from transformers) ``--backbone`` is a
transformers folder or its ``config.json`` alone (random weights of that architecture):

    python tools/benchmark.py configs/soma/soma_dinov3-L_mask2former.py \
        --backbone checkpoints/dinov3-vitl16-pretrain-lvd1689m/config.json
"""
import argparse
import json
import sys

from mmengine.config import DictAction

from soma.apis.benchmark import benchmark, init_benchmark_model
from soma.utils.cli import run_cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Benchmark merged vs unmerged SoMA inference')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', nargs='?', default=None, help='optional checkpoint')
    parser.add_argument('--backbone', default=None,
                        help='converted DINOv2 checkpoint; for an HFVisionBackbone config a '
                        'transformers folder or its config.json')
    parser.add_argument('--shape', type=int, nargs=2, default=[512, 512], metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--repeat', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--out', default='work_dirs/benchmark.json', help='json output')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='config overrides, key=value')
    return parser.parse_args(argv)


def run(args):
    model = init_benchmark_model(args.config, args.checkpoint, device=args.device,
                                 backbone=args.backbone, cfg_options=args.cfg_options)
    result = benchmark(model, tuple(args.shape), args.batch, args.repeat, args.warmup,
                       out=args.out)
    print(json.dumps(result['fps'], indent=2))
    print(f"merged / plain = {result['ratio_merged_vs_plain']:.3f}, "
          f"unmerged / plain = {result['ratio_unmerged_vs_plain']:.3f}; written to {args.out}")


def main(argv=None):
    return run_cli(run, parse_args(argv))

if __name__ == '__main__':
    sys.exit(main())
