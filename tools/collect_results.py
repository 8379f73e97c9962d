"""Collect the results of training/test runs into one table and a bar chart.

    python tools/collect_results.py work_dirs/soma_dinov2-L_mask2former \
        work_dirs/lora_dinov2-L_mask2former [--out work_dirs/results]

Reads each work dir's newest run (``<timestamp>/vis_data/scalars.json``, the dumped config
and the log) and writes ``<out>.md``, ``<out>.csv`` and ``<out>.png`` (method, backbone,
trainable parameters, per-target and mean mIoU or mAP, iterations, and the paper's numbers
where published). See ``soma.apis.collect_results``. Nothing is written on a bad input.
"""
import argparse
import sys

from soma.apis.collect_results import collect_results
from soma.utils.cli import run_cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Collect run results into one table')
    parser.add_argument('work_dirs', nargs='+', help='mmengine work dirs of the runs')
    parser.add_argument('--out', default='results',
                        help='output path without extension (writes .md, .csv, .png)')
    return parser.parse_args(argv)


def run(args):
    paths = collect_results(args.work_dirs, args.out)
    for key in ('markdown', 'csv', 'png'):
        print(paths[key])


def main(argv=None):
    return run_cli(run, parse_args(argv))

if __name__ == '__main__':
    sys.exit(main())
