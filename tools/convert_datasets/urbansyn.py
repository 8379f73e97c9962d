"""UrbanSyn ss/ss_<n>.png -> ss/rgb_<n>.png with 19 -> 255 (+ class statistics).

See docs/datasets.md.

    python tools/convert_datasets/urbansyn.py data/urbansyn --nproc 8
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))

from soma.datasets.convert.common import default_nproc  # noqa: E402
from soma.utils.cli import ArgumentParser, run_cli  # noqa: E402
from soma.datasets.convert.urbansyn import convert_urbansyn  # noqa: E402


def main(argv=None):
    parser = ArgumentParser(description='Convert UrbanSyn labels (19 -> 255)')
    parser.add_argument('urbansyn_path', help='UrbanSyn root holding rgb/ and ss/')
    parser.add_argument('--gt-dir', default='ss', help='label folder inside urbansyn_path')
    parser.add_argument('-o', '--out-dir', help='output root (default: urbansyn_path)')
    parser.add_argument('--nproc', type=int, default=default_nproc(), help='processes')
    parser.add_argument('--overwrite', action='store_true', help='redo existing outputs')
    args = parser.parse_args(argv)
    return run_cli(convert_urbansyn, root=args.urbansyn_path, out_dir=args.out_dir,
                   gt_dir=args.gt_dir, nproc=args.nproc, overwrite=args.overwrite)


if __name__ == '__main__':
    sys.exit(main())
