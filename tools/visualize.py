"""Colour-coded predictions (Cityscapes palette) side by side with the input images.

    python tools/visualize.py CONFIG CHECKPOINT IMAGES... \
        [--backbone checkpoints/dinov2_sora_converted.pth] [--tta] [--save_dir DIR] \
        [--device cpu]

CHECKPOINT may be a released adapter + head checkpoint (then give --backbone) or a full one.
Writes ``<save_dir>/<image name>.png`` (input | prediction).
"""
import argparse
import sys

from mmengine.config import DictAction

from soma.apis.inference import init_model, visualize
from soma.utils.cli import run_cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Visualise SoMA segmentation predictions')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='full or adapter + head checkpoint')
    parser.add_argument('images', nargs='+', help='image files')
    parser.add_argument('--backbone', default=None,
                        help='converted DINOv2 checkpoint for an adapter-only checkpoint')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    parser.add_argument('--save_dir', '--save-dir', dest='save_dir', default='work_dirs/vis')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='config overrides, key=value')
    return parser.parse_args(argv)


def run(args):
    model = init_model(args.config, args.checkpoint, device=args.device,
                       backbone=args.backbone, cfg_options=args.cfg_options)
    paths = visualize(model, args.images, args.save_dir, tta=args.tta)
    print(f'{len(paths)} images written to {args.save_dir}')


def main(argv=None):
    return run_cli(run, parse_args(argv))

if __name__ == '__main__':
    sys.exit(main())
