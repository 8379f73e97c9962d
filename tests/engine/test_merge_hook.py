"""MergeAdaptersHook: two real Runner runs with a validation in between, one merging the
adapters for the validation, one not: the same losses and bit-identical weights after."""
import copy

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner

import soma  # noqa: F401
from soma.apis.demo import demo_config
from soma.datasets import make_synthetic_dg_benchmark
from soma.peft.layer import SoMALinear

SIZE = 64
FCN_HEAD = dict(type='FCNHead', in_channels=64, in_index=3, channels=16, num_convs=1,
                concat_input=False, dropout_ratio=0.1, num_classes=19,
                norm_cfg=dict(type='GN', num_groups=4), align_corners=False,
                loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0))


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('synthetic_seg_merge')
    make_synthetic_dg_benchmark(root, num_train=4, num_val=1, size=(SIZE, SIZE))
    return str(root)


class _Probe(Hook):
    """Losses of every train iteration; merged state of the SoMA layers during validation."""

    priority = 'VERY_LOW'

    def __init__(self):
        self.losses, self.merged_during_val, self.merged_during_train = [], [], []

    @staticmethod
    def _merged(runner):
        return [m.merged for m in runner.model.modules() if isinstance(m, SoMALinear)]

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append(outputs['loss'].item())
        self.merged_during_train.extend(self._merged(runner))

    def before_val_iter(self, runner, batch_idx, data_batch=None):
        self.merged_during_val.extend(self._merged(runner))

    before_test_iter = before_val_iter


def run(data_root, work_dir, merge):
    cfg = demo_config(data_root, work_dir, 4, val=True, image_size=SIZE)
    cfg.model.decode_head = copy.deepcopy(FCN_HEAD)
    cfg.train_cfg.val_interval = 2  # validations after iterations 2 and 4
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.interval = 100
    cfg.default_hooks.checkpoint.pop('save_best', None)
    cfg.custom_hooks = [dict(type='MergeAdaptersHook')] if merge else []
    cfg.randomness = dict(seed=0)
    probe = _Probe()
    runner = Runner.from_cfg(cfg)
    runner.register_hook(probe)
    runner.train()
    return runner, probe


def test_training_continues_bit_for_bit_with_merged_validation(data_root, tmp_path):
    plain_runner, plain = run(data_root, tmp_path / 'plain', merge=False)
    merged_runner, merged = run(data_root, tmp_path / 'merged', merge=True)

    assert merged.merged_during_val and all(merged.merged_during_val)
    assert not any(merged.merged_during_train)
    assert not any(plain.merged_during_val)
    assert merged.losses == plain.losses and len(plain.losses) == 4
    plain_sd = plain_runner.model.state_dict()
    merged_sd = merged_runner.model.state_dict()
    assert plain_sd.keys() == merged_sd.keys()
    for key in plain_sd:
        assert torch.equal(plain_sd[key], merged_sd[key]), key
    for (name, a), (_, b) in zip(plain_runner.model.named_parameters(),
                                 merged_runner.model.named_parameters()):
        assert torch.equal(a, b), name  # the live weights, not only the exported ones

    # the metrics of the merged validation equal the unmerged ones (same predictions)
    plain_metrics = plain_runner.message_hub.log_scalars
    merged_metrics = merged_runner.message_hub.log_scalars
    miou = [k for k in plain_metrics if k.startswith('val/') and 'mIoU' in k]
    assert miou
    for key in miou:
        assert merged_metrics[key].current() == pytest.approx(plain_metrics[key].current(),
                                                              abs=1e-6)

    # the test is sensitive: merging then unmerging by subtraction does not restore W_res
    layers = [m for m in merged_runner.model.modules() if isinstance(m, SoMALinear)]
    changed = 0
    for layer in layers:
        before = layer.weight.detach().clone()
        layer.merge()
        layer.unmerge()
        changed += not torch.equal(layer.weight, before)
        layer.weight.data.copy_(before)
    assert changed > 0


def test_test_loop_merges_and_restores(data_root, tmp_path):
    runner, probe = run(data_root, tmp_path / 'test', merge=True)
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    probe.merged_during_val.clear()
    runner.test()
    assert probe.merged_during_val and all(probe.merged_during_val)
    assert not any(m.merged for m in runner.model.modules() if isinstance(m, SoMALinear))
    after = runner.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
