"""PEFTOptimWrapperConstructor and the annealed weight decay, checked by hand."""
import logging
import math

import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper
from mmengine.registry import PARAM_SCHEDULERS, DefaultScope
from torch import nn

import soma  # noqa: F401


class _Net(nn.Module):
    """backbone (half frozen) + a head with a norm and a query embedding."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 4))
        self.head = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
        self.query_embed = nn.Embedding(2, 3)
        for p in self.backbone[0].parameters():
            p.requires_grad = False


OPTIM = dict(
    constructor='PEFTOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.5, decay_mult=1.0),
                                    'query_embed': dict(lr_mult=1.0, decay_mult=0.0)},
                       norm_decay_mult=0.0))


def _groups(optim_wrapper, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(g['params'][0])]: g for g in optim_wrapper.optimizer.param_groups}


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_only_trainable_parameters_with_paramwise_rules():
    logger, collect = MMLogger.get_current_instance(), _Collect()
    logger.addHandler(collect)
    model = _Net()
    try:
        with DefaultScope.overwrite_default_scope('mmseg'):
            ow = build_optim_wrapper(model, dict(OPTIM))
    finally:
        logger.removeHandler(collect)
    groups = _groups(ow, model)
    assert 'backbone.0.weight' not in groups and 'backbone.0.bias' not in groups
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(groups) == trainable
    # custom_keys win over norm_decay_mult (mmengine's rule): backbone norm keeps decay x1
    assert groups['backbone.2.weight']['lr'] == pytest.approx(5e-4)
    assert groups['backbone.2.weight']['weight_decay'] == pytest.approx(0.05)
    assert groups['head.1.weight']['weight_decay'] == 0  # norm_decay_mult=0
    assert groups['head.0.weight']['weight_decay'] == pytest.approx(0.05)
    assert groups['query_embed.weight']['weight_decay'] == 0
    out = '\n'.join(collect.lines)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (n_trainable, sum(p.numel() for p in model.parameters())) == (55, 75)
    assert '55 trainable of 75 parameters' in out
    assert 'is skipped since its requires_grad' not in out


def test_without_paramwise_cfg_one_group_of_trainable_parameters():
    model = _Net()
    with DefaultScope.overwrite_default_scope('mmseg'):
        ow = build_optim_wrapper(model, dict(constructor='PEFTOptimWrapperConstructor',
                                             optimizer=dict(type='SGD', lr=0.1)))
    (group, ) = ow.optimizer.param_groups
    assert {id(p) for p in group['params']} == {
        id(p) for p in model.parameters() if p.requires_grad}


def test_nothing_trainable_is_an_error():
    model = nn.Linear(2, 2).requires_grad_(False)
    with DefaultScope.overwrite_default_scope('mmseg'), \
            pytest.raises(ValueError, match='no trainable parameter'):
        build_optim_wrapper(model, dict(OPTIM))


def _hand_cosine(wd0, t, t_max, eta_min):
    if wd0 == 0:
        return 0.0
    return eta_min + 0.5 * (wd0 - eta_min) * (1 + math.cos(math.pi * t / t_max))


@pytest.mark.parametrize('scope', ['mmseg', 'mmdet'])
def test_released_weight_decay_schedule_keeps_zero_groups_at_zero(scope):
    model = _Net()
    with DefaultScope.overwrite_default_scope(scope):
        ow = build_optim_wrapper(model, dict(OPTIM))
        scheduler = PARAM_SCHEDULERS.build(
            dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', eta_min=1e-5,
                 begin=0, end=10, by_epoch=False), default_args=dict(optimizer=ow))
    assert type(scheduler).__module__ == 'soma.engine.schedulers'
    starts = [g['weight_decay'] for g in ow.optimizer.param_groups]
    assert 0 in starts and 0.05 in starts
    for t in range(1, 10):
        ow.step()
        scheduler.step()
        for g, wd0 in zip(ow.optimizer.param_groups, starts):
            assert g['weight_decay'] == pytest.approx(_hand_cosine(wd0, t, 10, 1e-5), abs=1e-12)
    # mmengine's own recursive form would have lifted the zero groups towards eta_min
    ref = _Net()
    with DefaultScope.overwrite_default_scope('mmengine'):
        ow2 = build_optim_wrapper(ref, {k: v for k, v in OPTIM.items() if k != 'constructor'})
        mm = PARAM_SCHEDULERS.build(
            dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', eta_min=1e-5,
                 begin=0, end=10, by_epoch=False), default_args=dict(optimizer=ow2))
    for _ in range(5):
        ow2.step()
        mm.step()
    assert max(g['weight_decay'] for g in ow2.optimizer.param_groups
               if g['initial_weight_decay'] == 0) > 0


def test_learning_rate_schedules_are_unchanged():
    model = _Net()
    with DefaultScope.overwrite_default_scope('mmseg'):
        ow = build_optim_wrapper(model, dict(OPTIM))
        sched = PARAM_SCHEDULERS.build(
            dict(type='CosineAnnealingParamScheduler', param_name='lr', eta_min=0, begin=0,
                 end=4, by_epoch=False), default_args=dict(optimizer=ow))
    for t in range(1, 4):
        ow.step()
        sched.step()
        for g in ow.optimizer.param_groups:
            assert g['lr'] == pytest.approx(_hand_cosine(g['initial_lr'], t, 4, 0))


def test_optimizer_state_is_built_for_trainable_parameters_only():
    model = _Net()
    with DefaultScope.overwrite_default_scope('mmseg'):
        ow = build_optim_wrapper(model, dict(OPTIM))
    loss = model.head(model.backbone(torch.randn(2, 4))).sum() + model.query_embed.weight.sum()
    ow.update_params(loss)
    assert model.backbone[0].weight not in ow.optimizer.state
    assert model.head[0].weight in ow.optimizer.state
