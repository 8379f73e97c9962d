"""Segment a video: overlay video and, on request, one label PNG per frame.

    python tools/video_demo.py CONFIG CHECKPOINT VIDEO --out OUT.mp4 [--backbone CONVERTED]
        [--onnx MODEL.onnx] [--batch-size N] [--labels-dir DIR] [--opacity A]

See soma/apis/video.py.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from soma.apis.video import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
