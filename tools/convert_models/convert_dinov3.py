"""Convert Meta's official DINOv3 ViT weights into a transformers folder for HFVisionBackbone.

    python tools/convert_models/convert_dinov3.py \
        checkpoints/dinov3_vitl16_pretrain_lvd1689m-<hash>.pth checkpoints/dinov3-vitl16 \
        [--arch vitl16]

OUT_DIR gets ``config.json`` + ``model.safetensors`` (``DINOv3ViTModel.from_pretrained``
loads it); it must not exist or be empty, and appears only when complete. The architecture
is read from the shapes; ``--arch`` refuses a checkpoint of another size. See
``soma.models.backbones.convert_dinov3``.
"""
import sys

from soma.models.backbones.convert_dinov3 import DINOV3_ARCHS, convert_dinov3_checkpoint
from soma.utils.cli import ArgumentParser, run_cli


def parse_args(argv=None):
    parser = ArgumentParser(description='Convert official DINOv3 weights for '
                                                 'transformers / HFVisionBackbone')
    parser.add_argument('checkpoint', help='official DINOv3 .pth (facebookresearch/dinov3)')
    parser.add_argument('out_dir', help='output transformers folder (new or empty)')
    parser.add_argument('--arch', choices=sorted(DINOV3_ARCHS),
                        help='expected size; refuse a checkpoint of another one')
    return parser.parse_args(argv)


def run(args):
    out = convert_dinov3_checkpoint(args.checkpoint, args.out_dir, arch=args.arch)
    print(f'wrote {out}')


def main(argv=None):
    return run_cli(run, parse_args(argv))

if __name__ == '__main__':
    sys.exit(main())
