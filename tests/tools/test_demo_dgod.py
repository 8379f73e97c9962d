"""The detection demo end to end: data, training with the fast-resume loop, per-domain test."""
import math
import os.path as osp

from soma.apis.demo_dgod import run_dgod_demo

DEFAULT_SCOPE = 'mmdet'

DOMAINS = ('daytime_clear', 'daytime_foggy', 'dusk_rainy', 'night_rainy', 'night_sunny')


def test_dgod_demo_trains_and_tests_every_domain(tmp_path):
    metrics = run_dgod_demo(tmp_path, max_iters=2, num_train=4, num_test=2, size=64)
    keys = [k for k in metrics if k.endswith('_mAP')]
    names = [k.lower().replace('-', '_') for k in keys]  # 'Night-Sunny' as the dataset says
    for domain in DOMAINS:
        assert any(domain in n for n in names), (domain, keys)
    assert all(math.isfinite(metrics[k]) for k in keys)
    assert osp.isfile(tmp_path / 'iter_2.pth')
