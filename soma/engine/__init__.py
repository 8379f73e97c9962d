"""Training machinery: optimizer constructor, weight-decay schedule, hooks, resumable loop."""
from . import hooks, loops, optimizers, schedulers  # noqa: F401  (registration)
from .hooks import LoadBackboneHook, SoMAMetaHook, WeightDecayLoggingHook
from .loops import FastResumeIterBasedTrainLoop
from .optimizers import PEFTOptimWrapperConstructor
from .schedulers import CosineAnnealingParamScheduler

__all__ = ['PEFTOptimWrapperConstructor', 'CosineAnnealingParamScheduler',
           'WeightDecayLoggingHook', 'LoadBackboneHook', 'SoMAMetaHook',
           'FastResumeIterBasedTrainLoop']
