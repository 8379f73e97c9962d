"""CPU demo of domain-generalised detection: SoMA + Co-DETR on a synthetic Diverse Weather.

    python tools/demo_dgod.py --work-dir work_dirs/demo_dgod [--iters N]

See soma/apis/demo_dgod.py for the steps.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from soma.apis.demo_dgod import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
