"""Evaluate a SoMA segmentor/detector checkpoint; see soma/apis/test.py.

    python tools/test.py CONFIG CHECKPOINT [--backbone CONVERTED] [--tta] [--out DIR]
                         [--show-dir DIR] [--work-dir DIR] [--cfg-options k=v ...]
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from soma.apis.test import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
