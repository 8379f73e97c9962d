"""Extract the SoMA adapter, neck and head weights of a trained detector (DGOD).

    python tools/extract_soma_dgod_weights.py --final_ckpt work_dirs/x/iter_40000.pth \
        --soma_ckpt checkpoints/soma_checkpoints/soma_dinov2-L_dgod.pth

Keeps every key without ``backbone`` (neck, query/RPN/RoI/bbox heads) plus the mask token,
the ``lora`` keys and the target biases; drops the EMA copy. A checkpoint in the release's
legacy Co-DETR key names is read too; the output always has this project's names.
"""
import sys

from soma.checkpoints import extract_file
from soma.utils.cli import ArgumentParser, run_cli


def parse_args(argv=None):
    parser = ArgumentParser(description='Extract SoMA adapter + detector head weights')
    parser.add_argument('--final_ckpt', required=True, help='trained full checkpoint')
    parser.add_argument('--soma_ckpt', required=True, help='output (.pth or .safetensors)')
    parser.add_argument('--target_modules', nargs='+', default=None,
                        help='target layer names whose biases are kept (default: the '
                             "recorded adapter config's, else q k v proj fc1 fc2)")
    parser.add_argument('--semantics', choices=['residual', 'release'], default=None,
                        help="override the semantics recorded in meta['soma']")
    return parser.parse_args(argv)


def run(args):
    path = extract_file(args.final_ckpt, args.soma_ckpt, args.target_modules, dgod=True,
                        semantics=args.semantics)
    print(f'adapter checkpoint written to {path}')


def main(argv=None):
    return run_cli(run, parse_args(argv))

if __name__ == '__main__':
    sys.exit(main())
