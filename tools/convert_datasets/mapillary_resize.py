"""Halve the Mapillary validation set for evaluation: images bicubic, labels nearest.

    python tools/convert_datasets/mapillary_resize.py data/mapillary/validation/images \
        data/mapillary/cityscapes_trainIdLabel/val/label \
        data/mapillary/half/val_img data/mapillary/half/val_label --nproc 8
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))

from soma.datasets.convert.common import default_nproc  # noqa: E402
from soma.utils.cli import ArgumentParser, run_cli  # noqa: E402
from soma.datasets.convert.mapillary import resize_mapillary_half  # noqa: E402


def main(argv=None):
    parser = ArgumentParser(description='Halve Mapillary images and labels')
    parser.add_argument('image_folder', help='source .jpg images')
    parser.add_argument('label_folder', help='source trainId .png labels (same names)')
    parser.add_argument('dst_image_folder')
    parser.add_argument('dst_label_folder')
    parser.add_argument('--nproc', type=int, default=default_nproc(), help='processes')
    parser.add_argument('--jpeg-quality', type=int, default=75,
                        help="JPEG quality of the halved images (75: PIL's default, used by "
                        'the release)')
    args = parser.parse_args(argv)
    return run_cli(resize_mapillary_half, image_dir=args.image_folder,
                   label_dir=args.label_folder, dst_image_dir=args.dst_image_folder,
                   dst_label_dir=args.dst_label_folder, nproc=args.nproc,
                   jpeg_quality=args.jpeg_quality)


if __name__ == '__main__':
    sys.exit(main())
