"""TensorBoard logging that is on when ``tensorboard`` is installed and a no-op otherwise.

The release logs to TensorBoard by default (``TensorboardVisBackend`` in its runtime config),
which makes a run fail where ``tensorboard`` is missing. ``OptionalTensorboardVisBackend``
writes the same event files (``<work_dir>/<timestamp>/vis_data/events.out.tfevents.*``) when
the ``SummaryWriter`` of ``writer_module`` imports, and otherwise logs one info line and
records nothing, so the default runtime configs can list it next to the json backend.
"""
import importlib
import logging
import os
from typing import Optional

import numpy as np

from mmdet.registry import VISBACKENDS as DET_VISBACKENDS
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.visualization import TensorboardVisBackend
from mmengine.visualization.vis_backend import force_init_env
from mmseg.registry import VISBACKENDS as SEG_VISBACKENDS

__all__ = ['OptionalTensorboardVisBackend']


class OptionalTensorboardVisBackend(TensorboardVisBackend):
    """mmengine's ``TensorboardVisBackend``, switched off when TensorBoard cannot be imported.

    Args:
        save_dir (str): folder of the event files (the visualizer passes ``vis_data/``).
        writer_module (str): the module providing ``SummaryWriter``: ``torch.utils.tensorboard``
            (needs the ``tensorboard`` package) or ``tensorboardX``. When it does not import,
            the backend is off (``enabled`` is False after the first use).
    """

    def __init__(self, save_dir, writer_module='torch.utils.tensorboard'):
        super().__init__(save_dir)
        self.writer_module = writer_module
        self.enabled = None  # decided on first use, when mmengine initialises the backend

    def _init_env(self):
        try:
            writer_cls = importlib.import_module(self.writer_module).SummaryWriter
        except (ImportError, AttributeError) as e:
            self.enabled = False
            print_log(f'TensorBoard logging is off: cannot import SummaryWriter from '
                      f'{self.writer_module} ({e}); `pip install tensorboard` to turn it on',
                      logger='current', level=logging.INFO)
            return
        os.makedirs(self._save_dir, exist_ok=True)
        self._tensorboard = writer_cls(self._save_dir)
        self.enabled = True

    @property
    @force_init_env
    def experiment(self) -> Optional[object]:
        """The ``SummaryWriter``, or None when TensorBoard is off."""
        return self._tensorboard if self.enabled else None

    @force_init_env
    def add_config(self, config: Config, **kwargs) -> None:
        """TensorBoard's ``add_config`` when enabled."""
        if self.enabled:
            super().add_config(config, **kwargs)

    @force_init_env
    def add_image(self, name: str, image: np.ndarray, step: int = 0, **kwargs) -> None:
        """TensorBoard's ``add_image`` when enabled."""
        if self.enabled:
            super().add_image(name, image, step, **kwargs)

    @force_init_env
    def add_scalar(self, name: str, value: float, step: int = 0, **kwargs) -> None:
        """TensorBoard's ``add_scalar`` when enabled."""
        if self.enabled:
            super().add_scalar(name, value, step, **kwargs)

    @force_init_env
    def add_scalars(self, scalar_dict: dict, step: int = 0, file_path: Optional[str] = None,
                    **kwargs) -> None:
        """TensorBoard's ``add_scalars`` when enabled."""
        if self.enabled:
            super().add_scalars(scalar_dict, step, file_path, **kwargs)

    def close(self) -> None:
        """Close the writer when enabled."""
        if self.enabled:
            super().close()


for _registry in (SEG_VISBACKENDS, DET_VISBACKENDS):  # usable under either default_scope
    _registry.register_module(module=OptionalTensorboardVisBackend)
