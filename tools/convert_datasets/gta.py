"""GTAV palette labels -> Cityscapes trainIds (+ class statistics); see docs/datasets.md.

    python tools/convert_datasets/gta.py data/gta --nproc 8
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))

from soma.datasets.convert.common import default_nproc  # noqa: E402
from soma.utils.cli import ArgumentParser, run_cli  # noqa: E402
from soma.datasets.convert.gta import convert_gta  # noqa: E402


def main(argv=None):
    parser = ArgumentParser(description='Convert GTAV labels to Cityscapes trainIds')
    parser.add_argument('gta_path', help='GTAV root holding images/ and labels/')
    parser.add_argument('--gt-dir', default='labels', help='label folder inside gta_path')
    parser.add_argument('-o', '--out-dir', help='output root (default: gta_path)')
    parser.add_argument('--nproc', type=int, default=default_nproc(), help='processes')
    parser.add_argument('--overwrite', action='store_true', help='redo existing outputs')
    args = parser.parse_args(argv)
    return run_cli(convert_gta, root=args.gta_path, out_dir=args.out_dir, gt_dir=args.gt_dir,
                   nproc=args.nproc, overwrite=args.overwrite)


if __name__ == '__main__':
    sys.exit(main())
