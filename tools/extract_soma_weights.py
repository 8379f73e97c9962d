"""Extract the SoMA adapter + decode-head weights of a trained segmentor (released layout).

    python tools/extract_soma_weights.py --final_ckpt work_dirs/x/iter_40000.pth \
        --soma_ckpt checkpoints/soma_checkpoints/x.pth [--target_modules q k v proj fc1 fc2]

Keeps the mask token, every ``lora`` key, the target biases of the adapted blocks and every
``decode_head.*`` key (and the same of ``ema_state_dict``). ``--soma_ckpt x.safetensors``
writes safetensors. Merge back with ``tools/merge_soma_weights.py``. The target layers and
their blocks are the recorded adapter config's (``meta['soma']``: any backbone, e.g. an
``HFVisionBackbone``'s ``q_proj ...`` in ``layer.<i>.``); without one DINOv2's.

``--backbone`` (for ``--peft-dir``): the converted DINOv2 file, or for an ``HFVisionBackbone``
the transformers folder of its config (``config.json`` + weights).

A ``peft_cfg`` model's checkpoint (``meta['peft']``, written by ``SoMAMetaHook``) keeps
peft's adapter keys (``...lora_A.default.weight``, ``lora_B``, DoRA's
``lora_magnitude_vector``), the trained keys recorded in its meta (the biases of peft's
``bias`` mode) and every key outside the backbone; ``--target_modules``/``--semantics`` do
not apply (``soma.checkpoints.peft_adapter``, ``docs/peft_baselines.md``).

``--peft-dir DIR --backbone CONVERTED`` (with or without ``--soma_ckpt``): also write the
adapters as a peft LoRA folder over the public converted weights (``adapter_config.json`` +
``adapter_model.safetensors``, see ``soma.peft.interop``), for
``peft.PeftModel.from_pretrained(<DinoVisionTransformer with CONVERTED loaded>, DIR)``:
rank r for the release's semantics, rank 2r ``[B | -B0] @ [A ; A0]`` for this project's
('residual', the SoMA init ``B0, A0`` is recomputed once from CONVERTED on ``--device``).
"""
import sys

from soma.checkpoints import extract_file, extract_peft_dir, load_soma_checkpoint_file
from soma.utils.cli import ArgumentParser, run_cli


def parse_args(argv=None):
    parser = ArgumentParser(description='Extract SoMA adapter + head weights')
    parser.add_argument('--final_ckpt', required=True, help='trained full checkpoint')
    parser.add_argument('--soma_ckpt', help='output (.pth or .safetensors)')
    parser.add_argument('--target_modules', nargs='+', default=None,
                        help='target layer names whose biases are kept (default: the '
                             "recorded adapter config's, else q k v proj fc1 fc2)")
    parser.add_argument('--semantics', choices=['residual', 'release'], default=None,
                        help="override the semantics recorded in meta['soma'] (a checkpoint "
                             "without it counts as 'release')")
    parser.add_argument('--peft-dir', help='also write a peft LoRA folder over --backbone')
    parser.add_argument('--backbone', help='converted DINOv2 checkpoint or transformers '
                                           'folder (for --peft-dir)')
    parser.add_argument('--device', default='cpu',
                        help='device of the SoMA init recomputed for --peft-dir (the training '
                             'device gives the training\'s values)')
    parser.add_argument('--ignore-fingerprint', action='store_true',
                        help='export the peft folder even when the backbone is not the one '
                             'the adapter was trained on (its fingerprint differs)')
    args = parser.parse_args(argv)
    if not args.soma_ckpt and not args.peft_dir:
        parser.error('give --soma_ckpt, --peft-dir, or both')
    if args.peft_dir and not args.backbone:
        parser.error('--peft-dir needs --backbone CONVERTED (the weights the adapter goes on)')
    return args


def run(args):
    final = load_soma_checkpoint_file(args.final_ckpt)  # read once, used by both outputs
    if args.soma_ckpt:
        path = extract_file(final, args.soma_ckpt, args.target_modules, semantics=args.semantics)
        print(f'adapter checkpoint written to {path}')
    if args.peft_dir:
        extract_peft_dir(final, args.backbone, args.peft_dir, device=args.device,
                         semantics=args.semantics,
                         check_fingerprint=not args.ignore_fingerprint)
        print(f'peft adapter folder written to {args.peft_dir}')


def main(argv=None):
    return run_cli(run, parse_args(argv))

if __name__ == '__main__':
    sys.exit(main())
