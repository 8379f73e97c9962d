"""Train a SoMA segmentor (configs/) or detector (DGOD/configs/); see soma/apis/train.py.

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume [auto|PATH]]
                          [--auto-scale-lr] [--cfg-options k=v ...] [--launcher pytorch]
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from soma.apis.train import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
