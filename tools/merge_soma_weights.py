"""Merge released SoMA adapter + head weights with a converted DINOv2 backbone.

    python tools/merge_soma_weights.py \
        --backbone_ckpt checkpoints/dinov2_sora_converted.pth \
        --soma_ckpt checkpoints/soma_checkpoints/soma_dinov2-L_g2cbm_best.pth \
        --merged_ckpt checkpoints/merged_checkpoints/soma_dinov2-L_g2cbm_best.pth

The adapter may be a ``.pth`` or ``.safetensors`` file; released adapters ('release'
semantics) and adapters extracted from this project's models ('residual' semantics, see
``soma.checkpoints``) are both handled. A detector (DGOD) adapter in the release's
legacy Co-DETR key names is renamed to ours (``soma.checkpoints.legacy_codetr``). The output is
written atomically; a missing, corrupt or unsafe file is a one-line error and no output.

For an ``HFVisionBackbone`` model ``--backbone_ckpt`` is the transformers folder of its
config (``config.json`` + weights, as ``save_pretrained`` writes it): its weights become the
``backbone.model.hf_model.*`` keys (``backbone.hf_model.*`` for ``peft_cfg``).

A peft adapter (``meta['peft']``, ``peft_cfg`` models) is merged the same way; for
``pissa``/``olora`` the adapted base weights ``W - s*B0@A0`` are recomputed from the
converted backbone with peft's own init (``soma.checkpoints.peft_adapter``).
"""
import sys

from soma.checkpoints import merge_file, merge_peft_file
from soma.utils.cli import ArgumentParser, run_cli


def parse_args(argv=None):
    parser = ArgumentParser(description='Merge SoMA adapter weights with a backbone')
    parser.add_argument('--backbone_ckpt', required=True,
                        help='converted DINOv2 checkpoint, or the transformers folder of an '
                             'HFVisionBackbone')
    parser.add_argument('--soma_ckpt', required=True, help='adapter + head checkpoint')
    parser.add_argument('--merged_ckpt', required=True, help='output full checkpoint')
    parser.add_argument('--device', default='cpu',
                        help='device of the SVD re-initialisation for residual adapters '
                             '(the training device gives a bit-exact rebuild)')
    parser.add_argument('--ignore-fingerprint', action='store_true',
                        help='merge even when the backbone is not the one the adapter was '
                             'trained on (its recorded fingerprint differs)')
    parser.add_argument('--peft-dir', help="peft folder of extract_soma_weights.py --peft-dir: "
                                           "a 'residual' adapter's W_res from it, no SVD")
    return parser.parse_args(argv)


def run(args):
    if args.peft_dir:
        path = merge_peft_file(args.backbone_ckpt, args.soma_ckpt, args.peft_dir,
                               args.merged_ckpt, device=args.device,
                               check_fingerprint=not args.ignore_fingerprint)
    else:
        path = merge_file(args.backbone_ckpt, args.soma_ckpt, args.merged_ckpt,
                          device=args.device, check_fingerprint=not args.ignore_fingerprint)
    print(f'merged checkpoint written to {path}')


def main(argv=None):
    return run_cli(run, parse_args(argv))

if __name__ == '__main__':
    sys.exit(main())
