"""Inference FPS of a segmentor: adapters unmerged vs merged vs the plain backbone; see
soma/apis/benchmark.py.

    python tools/benchmark.py CONFIG [CHECKPOINT] [--backbone CONVERTED] \
        [--shape 512 512] [--batch 1] [--repeat 20] [--warmup 3] [--device cuda] \
        [--out work_dirs/benchmark.json]

Without CHECKPOINT the model has random weights (speed does not depend on them). Merged
inference should match the plain backbone (``ratio_merged_vs_plain`` ~1.0). With an
HFVisionBackbone config (DINOv3, DINOv2, SigLIP2 from transformers) ``--backbone`` is a
transformers folder or its ``config.json`` alone (random weights of that architecture):

    python tools/benchmark.py configs/soma/soma_dinov3-L_mask2former.py \
        --backbone checkpoints/dinov3-vitl16-pretrain-lvd1689m/config.json
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from soma.apis.benchmark import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
