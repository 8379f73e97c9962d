"""Export a trained SoMA segmentor (or the Co-DETR detr branch) to one ONNX file.

    python tools/deploy/export_onnx.py CONFIG CHECKPOINT --shape H W --out FILE.onnx
        [--backbone CONVERTED] [--opset N] [--dynamic-batch] [--no-check]

See soma/apis/deploy.py.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from soma.apis.deploy import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
