"""``TidyRunner``: mmengine's Runner, leaving nothing behind when a bad input stops it early.

mmengine's ``Runner`` makes the work dir, the run's log folder (``<work_dir>/<timestamp>/``,
with its log file and ``vis_data/``) before it builds the model, and dumps a copy of the
config into the work dir; ``train()`` / ``test()`` then build the data, the optimizer and the
schedulers, and load the checkpoint. A bad config value or checkpoint found on the way would
leave a run folder behind that holds nothing but the start of a log.
"""
import contextlib
import logging
import os
import os.path as osp
import shutil
from typing import Iterator

from mmengine.runner import Runner
from torch import nn

from soma.utils.atomic import first_missing_dir, remove_empty_dirs
from soma.utils.cli import USER_ERRORS

__all__ = ['TidyRunner']


class TidyRunner(Runner):
    """mmengine's ``Runner``; a user error before the run starts removes what it wrote.

    "Before the run starts": while the Runner is constructed, and in ``train()`` / ``val()``
    / ``test()`` until ``load_or_resume`` has returned (the last step before the loop), or in
    a block of :meth:`until_started`. A user error (:data:`soma.utils.cli.USER_ERRORS`)
    raised then removes the run's log folder, the config copy when this run wrote it anew,
    and the folders this run made for the work dir when they are left empty. An error once the loop runs
    (a bad image midway) keeps everything, and a bug (any other exception) too.
    """

    def __init__(self, *args, **kwargs):
        work_dir = osp.abspath(kwargs['work_dir'] if 'work_dir' in kwargs else args[1])
        self._before_run = dict(work_dir=work_dir, new_dir=first_missing_dir(work_dir),
                                entries=set(os.listdir(work_dir)) if osp.isdir(work_dir) else None)
        self._started = False
        with self.until_started():
            super().__init__(*args, **kwargs)

    @contextlib.contextmanager
    def until_started(self) -> Iterator[None]:
        """A user error raised in the block before the run started removes what the run
        wrote (:meth:`remove_run`)."""
        try:
            yield
        except USER_ERRORS:
            if not self._started:
                self.remove_run()
            raise

    def remove_run(self) -> None:
        """Remove the run's log folder, its new config copy and the new folders left empty."""
        work_dir, entries = self._before_run['work_dir'], self._before_run['entries']
        log_dir = getattr(self, '_log_dir', None)
        if log_dir:
            logger = getattr(self, 'logger', None)
            for handler in list(getattr(logger, 'handlers', [])):  # its open log file
                if isinstance(handler, logging.FileHandler) and \
                        handler.baseFilename.startswith(log_dir + os.sep):
                    handler.close()
                    logger.removeHandler(handler)
            shutil.rmtree(log_dir, ignore_errors=True)
        cfg = getattr(self, 'cfg', None)
        if cfg is not None and getattr(self, '_timestamp', None):
            name = osp.basename(cfg.filename) if cfg.filename else f'{self._timestamp}.py'
            if (entries is None or name not in entries) and osp.isfile(osp.join(work_dir, name)):
                os.remove(osp.join(work_dir, name))
        remove_empty_dirs(work_dir, self._before_run['new_dir'])

    def load_or_resume(self) -> None:
        """mmengine's; once it returned, the run has started."""
        super().load_or_resume()
        self._started = True

    def train(self) -> nn.Module:
        """mmengine's ``train()``, tidy until the run started; the trained model."""
        with self.until_started():
            return super().train()

    def val(self) -> dict:
        """mmengine's ``val()``, tidy until the run started."""
        with self.until_started():
            return super().val()

    def test(self) -> dict:
        """mmengine's ``test()``, tidy until the run started."""
        with self.until_started():
            return super().test()
