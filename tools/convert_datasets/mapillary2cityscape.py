"""Mapillary Vistas labels -> Cityscapes trainIds; see docs/datasets.md for the class table.

    python tools/convert_datasets/mapillary2cityscape.py data/mapillary \
        data/mapillary/cityscapes_trainIdLabel --nproc 8
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))

from soma.datasets.convert.common import default_nproc  # noqa: E402
from soma.utils.cli import ArgumentParser, run_cli  # noqa: E402
from soma.datasets.convert.mapillary import convert_mapillary  # noqa: E402


def _convert(**kwargs):
    summary = convert_mapillary(**kwargs)
    print('Mapillary name -> Cityscapes trainId (255: void):')
    for index, (name, train_id) in enumerate(summary['table']):
        print(f'  {index:3d} {name} -> {train_id}')
    return summary


def main(argv=None):
    parser = ArgumentParser(
        description='Convert Mapillary Vistas labels to Cityscapes trainIds')
    parser.add_argument('ori_root_dir', help='Mapillary root holding config_<version>.json, '
                        'training/ and validation/')
    parser.add_argument('save_dir', nargs='?', default=None,
                        help='output root (default: ori_root_dir/cityscapes_trainIdLabel); '
                        'labels go to save_dir/{train,val}/label')
    parser.add_argument('--version', default='v1.2', help='label version (config_<v>.json)')
    parser.add_argument('--nproc', type=int, default=default_nproc(), help='processes')
    parser.add_argument('--overwrite', action='store_true', help='redo existing outputs')
    args = parser.parse_args(argv)
    return run_cli(_convert, root=args.ori_root_dir, out_dir=args.save_dir,
                   version=args.version, nproc=args.nproc, overwrite=args.overwrite)


if __name__ == '__main__':
    sys.exit(main())
