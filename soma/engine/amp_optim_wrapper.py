"""``AutocastOptimWrapper``: bfloat16 autocast without loss scaling, on any device (CPU too).

mmengine's ``AmpOptimWrapper`` refuses to be built without a GPU (it asserts CUDA/NPU/MLU),
so ``--amp`` on a CPU uses this wrapper: the forward and the losses run under
``torch.autocast(<device>, dtype=bfloat16)``; bfloat16 has float32's exponent range, so no
loss scaling is needed and ``backward``/``step`` are plain ``OptimWrapper``'s. Parameters,
gradients and optimizer states stay float32; float64 work (the SoMA SVD) is never cast.
"""
from contextlib import contextmanager
from typing import Iterator

import torch
from mmengine.device import get_device
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from mmengine.runner.amp import autocast
from torch import nn

__all__ = ['AutocastOptimWrapper']


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose ``optim_context`` autocasts to ``dtype`` (bfloat16 only).

    Args:
        dtype: 'bfloat16' (or ``torch.bfloat16``); float16 needs loss scaling: use
            mmengine's ``AmpOptimWrapper`` on a GPU instead.
        device_type: autocast device; default the one mmengine trains on (``get_device()``).
        **kwargs: ``OptimWrapper``'s.
    """

    def __init__(self, dtype='bfloat16', device_type=None, **kwargs):
        super().__init__(**kwargs)
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        if dtype != torch.bfloat16:
            raise ValueError(f'AutocastOptimWrapper: dtype must be bfloat16 (no loss scaling), '
                             f'got {dtype}; use AmpOptimWrapper for float16')
        self.cast_dtype = dtype
        self.device_type = device_type or get_device()

    @contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        """The parent context (gradient accumulation) inside ``torch.autocast``."""
        with super().optim_context(model), autocast(device_type=self.device_type,
                                                     dtype=self.cast_dtype):
            yield
