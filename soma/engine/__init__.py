"""Training machinery: optimizer constructor, weight-decay schedule, hooks, resumable loop."""
from . import hooks, loops, optimizers, schedulers  # noqa: F401  (registration)
from .amp_optim_wrapper import AutocastOptimWrapper
from .checkpoint_hook import CheckpointCheckHook, SafeCheckpointHook
from .hooks import LoadBackboneHook, SoMAMetaHook, WeightDecayLoggingHook
from .loops import FastResumeIterBasedTrainLoop
from .merge_hook import MergeAdaptersHook
from .optimizers import PEFTOptimWrapperConstructor
from .runner import TidyRunner
from .schedulers import CosineAnnealingParamScheduler

__all__ = ['PEFTOptimWrapperConstructor', 'CosineAnnealingParamScheduler',
           'WeightDecayLoggingHook', 'LoadBackboneHook', 'SoMAMetaHook',
           'FastResumeIterBasedTrainLoop', 'MergeAdaptersHook', 'AutocastOptimWrapper',
           'SafeCheckpointHook', 'CheckpointCheckHook', 'TidyRunner']
from .vis_backends import OptionalTensorboardVisBackend  # noqa: E402  (registration)

__all__ += ['OptionalTensorboardVisBackend']
