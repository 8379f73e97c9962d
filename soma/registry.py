"""The registries this plugin writes into.

Segmentation modules go to mmseg's registries, detection modules to mmdet's; modules used
by both (the backbone, hooks, optimizer constructor, schedulers) are registered in both so
that a config works under either ``default_scope``.
"""
from mmdet.registry import DATASETS as DET_DATASETS
from mmdet.registry import HOOKS as DET_HOOKS
from mmdet.registry import LOOPS as DET_LOOPS
from mmdet.registry import METRICS as DET_METRICS
from mmdet.registry import MODELS as DET_MODELS
from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS as DET_OPTIM_WRAPPER_CONSTRUCTORS
from mmdet.registry import PARAM_SCHEDULERS as DET_PARAM_SCHEDULERS
from mmdet.registry import TRANSFORMS as DET_TRANSFORMS
from mmseg.registry import DATASETS as SEG_DATASETS
from mmseg.registry import HOOKS as SEG_HOOKS
from mmseg.registry import LOOPS as SEG_LOOPS
from mmseg.registry import METRICS as SEG_METRICS
from mmseg.registry import MODELS as SEG_MODELS
from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS as SEG_OPTIM_WRAPPER_CONSTRUCTORS
from mmseg.registry import PARAM_SCHEDULERS as SEG_PARAM_SCHEDULERS
from mmseg.registry import TRANSFORMS as SEG_TRANSFORMS


def _register_in(*registries):
    def decorator(cls):
        for registry in registries:
            registry.register_module(module=cls)
        return cls
    return decorator


def register_model(cls):
    """Register a model class in both mmseg and mmdet ``MODELS``."""
    return _register_in(SEG_MODELS, DET_MODELS)(cls)


def register_hook(cls):
    return _register_in(SEG_HOOKS, DET_HOOKS)(cls)


def register_loop(cls):
    return _register_in(SEG_LOOPS, DET_LOOPS)(cls)


def register_optim_wrapper_constructor(cls):
    return _register_in(SEG_OPTIM_WRAPPER_CONSTRUCTORS, DET_OPTIM_WRAPPER_CONSTRUCTORS)(cls)


def register_param_scheduler(cls):
    return _register_in(SEG_PARAM_SCHEDULERS, DET_PARAM_SCHEDULERS)(cls)


__all__ = [
    'SEG_MODELS', 'DET_MODELS', 'SEG_DATASETS', 'DET_DATASETS', 'SEG_METRICS', 'DET_METRICS',
    'SEG_HOOKS', 'DET_HOOKS', 'SEG_LOOPS', 'DET_LOOPS', 'SEG_TRANSFORMS', 'DET_TRANSFORMS',
    'SEG_PARAM_SCHEDULERS', 'DET_PARAM_SCHEDULERS', 'SEG_OPTIM_WRAPPER_CONSTRUCTORS',
    'DET_OPTIM_WRAPPER_CONSTRUCTORS',
    'register_model', 'register_hook', 'register_loop', 'register_optim_wrapper_constructor',
    'register_param_scheduler'
]
