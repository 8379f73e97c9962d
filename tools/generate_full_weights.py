"""Generate a full checkpoint for evaluation from a converted backbone and SoMA weights.

    python tools/generate_full_weights.py --backbone_ckpt checkpoints/dinov2_sora_converted.pth \
        --soma_ckpt checkpoints/soma_checkpoints/soma_dinov2-L_g2cbm_best.pth \
        --out checkpoints/full/soma_dinov2-L_g2cbm_full.pth [--merge-adapters]

Without ``--merge-adapters`` the output is the merged SoMA checkpoint (as
``merge_soma_weights.py``), for the SoMA configs. With it, ``s * B @ A`` is folded into the
weights and the adapters are dropped: a plain DINOv2 + head checkpoint (keys
``backbone.<dinov2 key>``, ``decode_head.*``) for a config whose backbone has no
``lora_cfg``; it needs no SoMA code and runs as fast as the plain backbone. A peft adapter
(``meta['peft']``) is folded by peft's own ``merge_and_unload``: a plain backbone checkpoint
for the config with ``peft_cfg=None``. For an ``HFVisionBackbone`` ``--backbone_ckpt`` is the
transformers folder of its config; the folded keys are ``backbone.hf_model.<transformers key>``
(a plain transformers model under ``hf_model``).
"""
import sys

from soma.checkpoints import merge_file
from soma.utils.cli import ArgumentParser, run_cli


def parse_args(argv=None):
    parser = ArgumentParser(description='Generate full weights from backbone + SoMA')
    parser.add_argument('--backbone_ckpt', required=True,
                        help='converted DINOv2 checkpoint, or the transformers folder of an '
                             'HFVisionBackbone')
    parser.add_argument('--soma_ckpt', required=True, help='adapter + head checkpoint')
    parser.add_argument('--out', '--merged_ckpt', dest='out', required=True,
                        help='output checkpoint (.pth or .safetensors)')
    parser.add_argument('--merge-adapters', '--merge_adapters', dest='merge_adapters',
                        action='store_true', help='fold the adapters into plain weights')
    parser.add_argument('--device', default='cpu', help='device of the SVD re-initialisation')
    parser.add_argument('--ignore-fingerprint', action='store_true',
                        help='merge even when the backbone is not the one the adapter was '
                             'trained on (its recorded fingerprint differs)')
    return parser.parse_args(argv)


def run(args):
    path = merge_file(args.backbone_ckpt, args.soma_ckpt, args.out,
                      merge_adapters=args.merge_adapters, device=args.device,
                      check_fingerprint=not args.ignore_fingerprint)
    print(f'full checkpoint written to {path}')


def main(argv=None):
    return run_cli(run, parse_args(argv))

if __name__ == '__main__':
    sys.exit(main())
