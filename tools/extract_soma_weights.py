"""Extract the SoMA adapter + decode-head weights of a trained segmentor (released layout).

    python tools/extract_soma_weights.py --final_ckpt work_dirs/x/iter_40000.pth \
        --soma_ckpt checkpoints/soma_checkpoints/x.pth [--target_modules q k v proj fc1 fc2]

Keeps the mask token, every ``lora`` key, the target biases of the adapted blocks and every
``decode_head.*`` key (and the same of ``ema_state_dict``). ``--soma_ckpt x.safetensors``
writes safetensors. Merge back with ``tools/merge_soma_weights.py``.
"""
import argparse
import sys


def parse_args(argv=None):
    from soma.peft.config import DEFAULT_TARGET_MODULES
    parser = argparse.ArgumentParser(description='Extract SoMA adapter + head weights')
    parser.add_argument('--final_ckpt', required=True, help='trained full checkpoint')
    parser.add_argument('--soma_ckpt', required=True, help='output (.pth or .safetensors)')
    parser.add_argument('--target_modules', nargs='+', default=list(DEFAULT_TARGET_MODULES),
                        help='target layer names whose biases are kept')
    parser.add_argument('--semantics', choices=['residual', 'release'], default=None,
                        help="override the semantics recorded in meta['soma'] (a checkpoint "
                             "without it counts as 'release')")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from soma.apis.checkpoint import extract_file
    try:
        path = extract_file(args.final_ckpt, args.soma_ckpt, args.target_modules,
                            semantics=args.semantics)
    except (ValueError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f'adapter checkpoint written to {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
