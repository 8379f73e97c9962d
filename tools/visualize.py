"""Colour-coded predictions (Cityscapes palette) side by side with the input images; see
soma/apis/inference.py.

    python tools/visualize.py CONFIG CHECKPOINT IMAGES... \
        [--backbone checkpoints/dinov2_sora_converted.pth] [--tta] [--save_dir DIR] \
        [--device cpu]

CHECKPOINT may be a released adapter + head checkpoint (then give --backbone) or a full one.
Writes ``<save_dir>/<image name>.png`` (input | prediction). Images that cannot be read are
named at the end (exit code 1); the others are written.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from soma.apis.inference import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
