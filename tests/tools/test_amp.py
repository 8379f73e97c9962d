"""``--amp`` on the CPU: bfloat16 autocast for segmentation training (the first loss within
bfloat16 tolerance of the float32 one, the network really in bfloat16), the SoMA SVD untouched
(float64), ``tools/test.py --amp``; detection refused on the CPU (mmcv kernels)."""
import copy
import math
import os.path as osp

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner

import soma  # noqa: F401
from soma.apis import test as test_api
from soma.apis import train as train_api
from soma.apis.demo import demo_config
from soma.apis.launch import amp_autocast, amp_dtype
from soma.datasets import make_synthetic_dg_benchmark
from soma.peft.layer import SoMALinear

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SIZE = 64
FCN_HEAD = dict(type='FCNHead', in_channels=64, in_index=3, channels=16, num_convs=1,
                concat_input=False, dropout_ratio=0.0, num_classes=19,
                norm_cfg=dict(type='GN', num_groups=4), align_corners=False,
                loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0))
BF16_RTOL = 3e-2  # a few bfloat16 roundings (2^-8 each) through the network


class _Probe(Hook):
    """Per-iteration losses, the dtype a backbone linear computes in, the adapters at start."""

    priority = 'VERY_LOW'

    def __init__(self):
        self.losses, self.linear_dtypes, self.adapters = [], set(), None

    def before_train(self, runner):
        layers = [m for m in runner.model.modules() if isinstance(m, SoMALinear)]
        assert layers
        self.adapters = [(m.lora_A.weight.detach().clone(), m.lora_B.weight.detach().clone(),
                          m.weight.detach().clone()) for m in layers]
        layers[-1].register_forward_hook(
            lambda mod, inp, out: self.linear_dtypes.add(out.dtype) if mod.training else None)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append(outputs['loss'].item())


def train_run(config_path, work_dir, amp):
    args = [config_path, '--work-dir', str(work_dir)] + (['--amp'] if amp else [])
    cfg = train_api.build_train_config(train_api.parse_args(args))
    probe = _Probe()
    runner = Runner.from_cfg(cfg)
    runner.register_hook(probe)
    runner.train()
    return runner, probe


def check_amp_against_fp32(fp32, amp):
    (runner32, probe32), (runner16, probe16) = fp32, amp
    assert type(runner16.optim_wrapper).__name__ == 'AutocastOptimWrapper'
    assert runner16.optim_wrapper.cast_dtype == torch.bfloat16
    assert probe32.linear_dtypes == {torch.float32}
    assert probe16.linear_dtypes == {torch.bfloat16}  # the forward really ran in bfloat16
    assert all(math.isfinite(x) for x in probe16.losses)
    first32, first16 = probe32.losses[0], probe16.losses[0]
    assert first16 != first32  # autocast changed the numerics ...
    assert first16 == pytest.approx(first32, rel=BF16_RTOL)  # ... within bfloat16 rounding
    # the SVD initialisation is the same (float64, outside autocast) in both runs
    for a, b in zip(probe32.adapters, probe16.adapters):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    for p in runner16.model.parameters():  # parameters stay float32
        assert p.dtype == torch.float32


@pytest.fixture(scope='module')
def seg_config(tmp_path_factory):
    root = tmp_path_factory.mktemp('amp_seg')
    make_synthetic_dg_benchmark(root / 'data', num_train=4, num_val=1, size=(SIZE, SIZE))
    cfg = demo_config(root / 'data', root / 'unused', 2, val=False, image_size=SIZE)
    cfg.model.decode_head = copy.deepcopy(FCN_HEAD)
    cfg.default_hooks.logger.interval = 1
    cfg.randomness = dict(seed=0)
    path = str(root / 'seg_cfg.py')
    cfg.dump(path)
    return path


def test_amp_dtype_policy():
    assert amp_dtype('cpu') == 'bfloat16'
    with amp_autocast(True, 'cpu'):
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype \
            == torch.bfloat16
    with amp_autocast(False, 'cpu'):
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype \
            == torch.float32


def test_svd_init_is_float64_even_under_autocast():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 32, generator=gen)
    layers = []
    for autocast in (False, True):
        layer = SoMALinear(32, 48, r=4, lora_alpha=8)
        with torch.no_grad():
            layer.weight.copy_(weight)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            layer.init_adapter()
        layers.append(layer)
    for name in ('weight', 'lora_A.weight', 'lora_B.weight'):
        a, b = (layer.get_parameter(name) for layer in layers)
        assert a.dtype == torch.float32 and torch.equal(a, b), name


def test_seg_train_amp_bf16_and_test_amp(seg_config, tmp_path):
    fp32 = train_run(seg_config, tmp_path / 'fp32', amp=False)
    amp = train_run(seg_config, tmp_path / 'amp', amp=True)
    check_amp_against_fp32(fp32, amp)
    # tools/test.py --amp on the trained checkpoint: same metrics keys, bf16 predictions
    ckpt = str(tmp_path / 'amp' / 'iter_2.pth')
    plain = test_api.test([seg_config, ckpt, '--work-dir', str(tmp_path / 't32')])
    mixed = test_api.test([seg_config, ckpt, '--work-dir', str(tmp_path / 't16'), '--amp'])
    assert plain.keys() == mixed.keys() and 'mean_mIoU' in mixed
    assert all(math.isfinite(v) for v in mixed.values())


def test_det_amp_on_cpu_is_refused_in_one_line(tmp_path, capsys):
    # mmcv 2.1's CPU nms / RoIAlign have no bfloat16 kernel (a bf16 Co-DETR step fails in
    # RPN's nms): --amp for detection needs a GPU, and says so before anything is built
    config = osp.join(REPO, 'DGOD', 'configs', 'demo', 'soma_tiny_codetr_demo.py')
    assert train_api.main([config, '--amp', '--work-dir', str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'needs a GPU' in err[0] and 'nms' in err[0]
