"""Convert released DINOv2 weights for the SoMA backbone (kernel 16, pos grid of the crop).

    python tools/convert_models/convert_dinov2_sora.py \
        checkpoints/dinov2_vitl14_pretrain.pth checkpoints/dinov2_sora_converted.pth \
        [--kernel 16] [--height 512] [--width 512]

PRETRAINED is the official ``dinov2_vit*14_pretrain.pth`` or a Hugging Face ``Dinov2Model``
file/folder. See ``soma.models.backbones.convert_dinov2`` for what is converted.
"""
import sys

from soma.models.backbones.convert_dinov2 import convert_dinov2_checkpoint
from soma.utils.cli import ArgumentParser, run_cli


def parse_args(argv=None):
    parser = ArgumentParser(description='Convert DINOv2 weights for SoMA')
    parser.add_argument('pretrained', help='DINOv2 checkpoint (official .pth or Hugging Face)')
    parser.add_argument('converted', help='output file (.pth, or .safetensors)')
    parser.add_argument('--kernel', type=int, default=16, help='patch kernel size')
    parser.add_argument('--height', type=int, default=512, help='training crop height')
    parser.add_argument('--width', type=int, default=512, help='training crop width')
    return parser.parse_args(argv)


def run(args):
    convert_dinov2_checkpoint(args.pretrained, args.converted, kernel=args.kernel,
                              height=args.height, width=args.width)


def main(argv=None):
    return run_cli(run, parse_args(argv))

if __name__ == '__main__':
    sys.exit(main())
