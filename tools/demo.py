"""The main job of ``make demo``: SoMA on a synthetic domain-generalisation benchmark (CPU).

    python tools/demo.py --work-dir work_dirs/demo [--iters N]

See soma/apis/demo.py for the steps.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from soma.apis.demo import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
