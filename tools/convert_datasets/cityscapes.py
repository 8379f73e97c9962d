"""Cityscapes polygons -> *_gtFine_labelTrainIds.png (official cityscapesscripts).

See docs/datasets.md.

    python tools/convert_datasets/cityscapes.py data/cityscapes --nproc 8
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))

from soma.datasets.convert.common import default_nproc  # noqa: E402
from soma.utils.cli import ArgumentParser, run_cli  # noqa: E402
from soma.datasets.convert.cityscapes import convert_cityscapes  # noqa: E402


def main(argv=None):
    parser = ArgumentParser(description='Convert Cityscapes polygons to trainId images')
    parser.add_argument('cityscapes_path', help='root holding leftImg8bit/ and gtFine/')
    parser.add_argument('--gt-dir', default='gtFine', help='annotation folder')
    parser.add_argument('-o', '--out-dir', help='output root (default: cityscapes_path)')
    parser.add_argument('--nproc', type=int, default=default_nproc(), help='processes')
    parser.add_argument('--overwrite', action='store_true', help='redo existing outputs')
    args = parser.parse_args(argv)
    return run_cli(convert_cityscapes, root=args.cityscapes_path, out_dir=args.out_dir,
                   gt_dir=args.gt_dir, nproc=args.nproc, overwrite=args.overwrite)


if __name__ == '__main__':
    sys.exit(main())
