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
from conftest import TINY_FCN_HEAD  # noqa: E402

SIZE = 64
FCN_HEAD = dict(TINY_FCN_HEAD, dropout_ratio=0.1)


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


def run(data_root, work_dir, merge, ema=False, peft_cfg=None, probe=None):
    cfg = demo_config(data_root, work_dir, 4, val=True, image_size=SIZE)
    cfg.model.decode_head = copy.deepcopy(FCN_HEAD)
    if peft_cfg is not None:  # a peft adapter on the backbone instead of SoMA's
        cfg.model.backbone.lora_cfg = None
        cfg.model.backbone.peft_cfg = dict(peft_cfg)
    cfg.train_cfg.val_interval = 2  # validations after iterations 2 and 4
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.interval = 100
    cfg.default_hooks.checkpoint.pop('save_best', None)
    cfg.custom_hooks = [dict(type='MergeAdaptersHook')] if merge else []
    if ema:  # EMAHook copies the EMA weights in around each validation
        cfg.custom_hooks.append(dict(type='EMAHook', momentum=0.3, begin_iter=0))
    cfg.randomness = dict(seed=0)
    probe = _Probe() if probe is None else probe
    runner = Runner.from_cfg(cfg)
    runner.register_hook(probe)
    runner.train()
    return runner, probe


@pytest.mark.parametrize('ema', [False, True], ids=['plain', 'ema'])
def test_training_continues_bit_for_bit_with_merged_validation(data_root, tmp_path, ema):
    plain_runner, plain = run(data_root, tmp_path / 'plain', merge=False, ema=ema)
    merged_runner, merged = run(data_root, tmp_path / 'merged', merge=True, ema=ema)

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
    if ema:
        ema_hooks = [[h for h in r.hooks if type(h).__name__ == 'EMAHook'][0]
                     for r in (plain_runner, merged_runner)]
        plain_ema, merged_ema = (h.ema_model.state_dict() for h in ema_hooks)
        for key in plain_ema:
            assert torch.equal(plain_ema[key], merged_ema[key]), key

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


# ------------------------------------------------------------------ peft adapters (peft_cfg)
def _peft_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)
            and hasattr(m, 'base_layer')]


class _PeftProbe(_Probe):
    """:class:`_Probe` for the layers of a peft adapter."""

    @staticmethod
    def _merged(runner):
        return [m.merged for m in _peft_layers(runner.model)]


PEFT_CFGS = {
    'lora': dict(type='LoraConfig', r=4, lora_alpha=8, start_lora_idx=2, lora_bias=True),
    'dora': dict(type='LoraConfig', r=4, lora_alpha=8, start_lora_idx=2, use_dora=True),
    'pissa': dict(type='LoraConfig', r=4, lora_alpha=8, start_lora_idx=0,
                  init_lora_weights='pissa'),
}


def run_peft(data_root, work_dir, merge, peft_cfg, ema=False):
    """:func:`run` with a peft adapter on the backbone instead of SoMA's."""
    return run(data_root, work_dir, merge, ema=ema, peft_cfg=peft_cfg, probe=_PeftProbe())


@pytest.mark.parametrize('method, ema', [('lora', False), ('dora', True), ('pissa', False)])
def test_peft_layers_merge_for_validation_and_restore_exactly(data_root, tmp_path, method,
                                                              ema):
    peft_cfg = PEFT_CFGS[method]
    plain_runner, plain = run_peft(data_root, tmp_path / 'plain', False, peft_cfg, ema)
    merged_runner, merged = run_peft(data_root, tmp_path / 'merged', True, peft_cfg, ema)

    assert merged.merged_during_val and all(merged.merged_during_val)
    assert not any(merged.merged_during_train) and not any(plain.merged_during_val)
    assert merged.losses == plain.losses and len(plain.losses) == 4
    for (name, a), (_, b) in zip(plain_runner.model.named_parameters(),
                                 merged_runner.model.named_parameters()):
        assert torch.equal(a, b), name
    plain_sd, merged_sd = plain_runner.model.state_dict(), merged_runner.model.state_dict()
    assert plain_sd.keys() == merged_sd.keys()
    assert all(torch.equal(plain_sd[k], merged_sd[k]) for k in plain_sd)
    if ema:
        ema_sd = [[h for h in r.hooks if type(h).__name__ == 'EMAHook'][0].ema_model.state_dict()
                  for r in (plain_runner, merged_runner)]
        assert all(torch.equal(ema_sd[0][k], ema_sd[1][k]) for k in ema_sd[0])
    layers = _peft_layers(merged_runner.model)
    assert layers and not any(m.merged for m in layers)
    assert not any(m._caches for m in layers if hasattr(m, '_caches'))  # DoRA's norm dropped
    plain_metrics = plain_runner.message_hub.log_scalars
    merged_metrics = merged_runner.message_hub.log_scalars
    miou = [k for k in plain_metrics if k.startswith('val/') and 'mIoU' in k]
    assert miou
    for key in miou:
        assert merged_metrics[key].current() == pytest.approx(plain_metrics[key].current(),
                                                              abs=1e-6)

    # the merged forward is the unmerged one (up to rounding), and peft's own unmerge by
    # subtraction would not give the trained weights back bit for bit
    backbone = merged_runner.model.backbone.eval()
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        unmerged_out = backbone(x)
        before = [m.get_base_layer().weight.detach().clone() for m in layers]
        for layer in layers:
            layer.merge()
        merged_out = backbone(x)
        for layer in layers:
            layer.unmerge()
        changed = sum(not torch.equal(m.get_base_layer().weight, w)
                      for m, w in zip(layers, before))
    for y, z in zip(merged_out, unmerged_out):
        torch.testing.assert_close(y, z, rtol=1e-4, atol=1e-5)
    assert changed > 0
