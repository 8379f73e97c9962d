"""torchrun (same arguments) whose processes' one-line errors stay one line; see
soma/apis/torchrun.py. ``tools/dist_train.sh`` and ``tools/dist_test.sh`` launch through it.

    python tools/torchrun.py --nproc_per_node=2 tools/train.py CONFIG --launcher pytorch
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from soma.apis.torchrun import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
