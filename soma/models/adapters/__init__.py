"""Adapter methods behind one interface (:class:`~.base.BackboneAdapter`): SoMA
(:mod:`.soma_tuner`, on :mod:`soma.peft`) and the ``peft`` library's tuners
(:mod:`.peft_tuner`). The models reach them through :mod:`soma.models.peft_backbone`."""
from .base import BackboneAdapter
from .peft_tuner import PeftTuner, apply_peft_adapter, build_peft_config, peft_cfg_of
from .soma_tuner import SoMATuner

__all__ = ['BackboneAdapter', 'SoMATuner', 'PeftTuner', 'apply_peft_adapter',
           'build_peft_config', 'peft_cfg_of']
