"""Collect the results of training/test runs into one table and a bar chart.

    python tools/collect_results.py work_dirs/soma_dinov2-L_mask2former \
        work_dirs/lora_dinov2-L_mask2former [--out work_dirs/results]

Reads each work dir's newest run (``<timestamp>/vis_data/scalars.json``, the dumped config
and the log) and writes ``<out>.md``, ``<out>.csv`` and ``<out>.png`` (method, backbone,
trainable parameters, per-target and mean mIoU or mAP, iterations, and the paper's numbers
where published). See ``soma.apis.collect_results``. Work dirs that cannot be read are named
at the end (exit code 1); the table of the others is written.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from soma.apis.collect_results import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
