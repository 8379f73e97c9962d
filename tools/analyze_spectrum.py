"""Singular-value spectra of the adapted layers of a backbone (and a trained model).

    python tools/analyze_spectrum.py checkpoints/dinov2_sora_converted.pth \
        [--soma_ckpt checkpoints/soma_checkpoints/soma_dinov2-L_g2cbm_best.pth] \
        [--r 16] [--out-dir work_dirs/spectrum]
    python tools/analyze_spectrum.py checkpoints/dinov3-vitl16-pretrain-lvd1689m \
        [--soma_ckpt work_dirs/soma_dinov3-L_mask2former/iter_40000.pth]
    python tools/analyze_spectrum.py configs/soma/soma_dinov3-L_mask2former.py

The backbone: a converted DINOv2 checkpoint, a transformers folder (DINOv3, DINOv2, SigLIP2:
the linears named as in transformers, e.g. ``model.layer.8.attention.q_proj``), or a config
whose backbone is an HFVisionBackbone on such a folder.

Writes ``spectrum_layers.csv`` (per layer: energy share of the minor r components, of the top
r, and with --soma_ckpt the trained weight's share and relative change),
``spectrum_blocks.csv`` (pooled per block), ``spectrum.png`` and ``minor_energy.png``.
"""
import sys

from soma.apis.spectrum import analyze_spectrum
from soma.utils.cli import ArgumentParser, run_cli


def parse_args(argv=None):
    parser = ArgumentParser(description='Spectrum analysis of a backbone\'s layers')
    parser.add_argument('converted', help='converted DINOv2 checkpoint, transformers folder, '
                        'or a config with an HFVisionBackbone')
    parser.add_argument('--soma_ckpt', default=None, help='trained SoMA (adapter) checkpoint')
    parser.add_argument('--r', type=int, default=16, help='number of minor components')
    parser.add_argument('--out-dir', '--out_dir', dest='out_dir', default='work_dirs/spectrum')
    parser.add_argument('--target_modules', nargs='+', default=None,
                        help='default: DINOv2 q k v proj fc1 fc2; HF: every linear of a block')
    return parser.parse_args(argv)


def run(args):
    paths = analyze_spectrum(args.converted, args.soma_ckpt, r=args.r, out_dir=args.out_dir,
                             target_modules=args.target_modules)
    for path in paths.values():
        print(path)


def main(argv=None):
    return run_cli(run, parse_args(argv))

if __name__ == '__main__':
    sys.exit(main())
