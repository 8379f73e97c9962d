"""The detection demo (``make demo-dgod``): SoMA + Co-DETR on a synthetic Diverse Weather.

    python tools/demo_dgod.py --work-dir work_dirs/demo_dgod [--iters N]

1. writes a tiny benchmark (5 weather domains, VOC XML) to ``WORK_DIR/data/diverseWeather``;
2. trains ``DGOD/configs/demo/soma_tiny_codetr_demo.py`` (tiny DINOv2 + Co-DINO) on
   ``daytime_clear`` on the CPU;
3. tests on all five domains and prints the per-domain VOC mAP table.
"""
import os.path as osp
import time
from typing import List, Optional

from mmengine.runner import Runner

from soma.apis.demo import REPO_ROOT
from soma.apis.launch import (as_config, check_max_iters, cpu_threads, run_cli, set_max_iters,
                              unique_visualizer_name)
from soma.checkpoints.layout import PathLike
from soma.datasets.synthetic_dgod import make_diverse_weather, point_config_to
from soma.utils.cli import ArgumentParser
from soma.utils.run_lock import work_dir_lock

__all__ = ['DGOD_DEMO_CONFIG', 'run_dgod_demo', 'main']

DGOD_DEMO_CONFIG = osp.join(REPO_ROOT, 'DGOD', 'configs', 'demo', 'soma_tiny_codetr_demo.py')


def run_dgod_demo(work_dir: PathLike = 'work_dirs/demo_dgod', config: PathLike = DGOD_DEMO_CONFIG,
                  max_iters: Optional[int] = None, num_train: int = 16, num_test: int = 12,
                  size: int = 128, seed: int = 0) -> dict:
    """Generate the data, train, test; return the test metrics (dict).

    It holds the lock of ``work_dir`` throughout, and runs with the demo config's
    ``cpu_threads`` (1) unless ``OMP_NUM_THREADS`` says otherwise.
    """
    check_max_iters(max_iters)  # before anything is written
    cfg = as_config(config)
    work_dir = osp.abspath(work_dir)
    data_root = osp.join(work_dir, 'data', 'diverseWeather')
    if point_config_to(cfg, data_root) == 0:
        raise ValueError(f'{config}: no dataset with data_root under data/diverseWeather')
    with work_dir_lock(work_dir):
        print(f'[demo-dgod] 1/3 synthetic Diverse Weather in {data_root}')
        make_diverse_weather(data_root, num_train=num_train, num_test=num_test, size=size,
                             seed=seed)
        cfg.work_dir = work_dir
        unique_visualizer_name(cfg)
        # evaluate once, after training (the config's own validation would repeat it)
        set_max_iters(cfg, max_iters, val=False)
        print(f'[demo-dgod] 2/3 training for {cfg.train_cfg.max_iters} iterations on the CPU '
              f'(logs in {work_dir})')
        with cpu_threads(cfg):
            runner = Runner.from_cfg(cfg)
            runner.train()
            print('[demo-dgod] 3/3 testing on the five weather domains')
            return runner.test()


def _print_table(metrics, seconds, work_dir):
    print('\n[demo-dgod] VOC mAP (%) per domain (synthetic Diverse Weather):')
    for key in (k for k in metrics if k.endswith('_mAP')):
        print(f'  {key.split("/")[-1]:<28s} {metrics[key]:6.2f}')
    print(f'[demo-dgod] done in {seconds:.0f} s; logs and checkpoint in {work_dir}')


def main(argv: Optional[List[str]] = None) -> int:
    """``tools/demo_dgod.py``: run the detection demo, one-line errors, exit code."""
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default='work_dirs/demo_dgod')
    parser.add_argument('--config', default=DGOD_DEMO_CONFIG)
    parser.add_argument('--iters', type=int, default=None, help='override max_iters')
    parser.add_argument('--num-train', type=int, default=16)
    parser.add_argument('--num-test', type=int, default=12)
    parser.add_argument('--size', type=int, default=128)
    args = parser.parse_args(argv)
    start = time.time()

    def run():
        metrics = run_dgod_demo(args.work_dir, args.config, args.iters, args.num_train,
                                args.num_test, args.size)
        _print_table(metrics, time.time() - start, args.work_dir)

    return run_cli(run)
