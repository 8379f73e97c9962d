"""Annealed weight decay that respects the parameter groups without decay.

The released configs anneal the weight decay with mmengine's
``dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', eta_min=1e-5, ...)``.
mmengine computes it recursively from the group's current value towards ``eta_min``; a group
whose decay is 0 (``decay_mult=0``: norms, queries, embeddings) is then pulled *up* to
``eta_min`` over training, which is not the intent.

Mechanism: :class:`CosineAnnealingParamScheduler` below subclasses mmengine's and is
registered under the *same type name* in the mmseg and mmdet ``PARAM_SCHEDULERS`` child
registries, so the released configs (``default_scope`` mmseg or mmdet) pick it up unchanged.
For ``param_name='weight_decay'`` each group follows the closed form from its own start value
``initial_weight_decay``::

    wd_t = eta_min + (wd_0 - eta_min) * (1 + cos(pi * t / T_max)) / 2,   and wd_t = 0 if wd_0 = 0

(``eta_min_ratio`` gives ``eta_min = ratio * wd_0`` per group). For any other ``param_name``
(e.g. ``lr``) it is exactly mmengine's scheduler (chainable form), so nothing else changes.
"""
import math
from typing import Optional

from mmengine.optim.scheduler import CosineAnnealingParamScheduler as _MMEngineCosine

from soma.registry import register_param_scheduler

__all__ = ['CosineAnnealingParamScheduler', 'cosine_weight_decay']


def cosine_weight_decay(wd0: float, step: int, t_max: int, eta_min: Optional[float] = None,
                        eta_min_ratio: Optional[float] = None) -> float:
    """The weight decay of a group starting at ``wd0`` after ``step`` steps (0 stays 0)."""
    if wd0 == 0:
        return 0.0
    floor = wd0 * eta_min_ratio if eta_min_ratio is not None else (eta_min or 0.0)
    return floor + (wd0 - floor) * (1 + math.cos(math.pi * step / t_max)) / 2


@register_param_scheduler
class CosineAnnealingParamScheduler(_MMEngineCosine):
    """mmengine's cosine scheduler; for ``weight_decay``: per-group closed form, 0 stays 0."""

    def _get_value(self):
        if self.param_name != 'weight_decay':
            return super()._get_value()
        return [
            cosine_weight_decay(base, self.last_step, self.T_max, self.eta_min, self.eta_min_ratio)
            for base in self.base_values
        ]
