"""An iteration-based training loop that resumes without replaying the data loader.

mmengine's ``IterBasedTrainLoop`` resumes at iteration K by loading (and augmenting) K
batches and throwing them away. :class:`FastResumeIterBasedTrainLoop` instead

- advances only the *batch sampler* (indices, no image is read) by K batches;
- seeds the random generators (``random``, numpy, torch) of every sample's data pipeline
  from ``(seed, rank, batch index, position in batch)``, inside the worker that loads it,
  and seeds them again before each iteration's ``train_step`` from ``(seed, rank,
  iteration)``.

So the images, augmentations and model-side randomness (dropout, point sampling) of
iteration i depend on i only, whatever ``num_workers`` is and whether the run was
interrupted: a resumed run reproduces the uninterrupted one (exactly on a deterministic
device). The sampler is re-seeded with the seed restored from the checkpoint when it
differs (a config without a fixed seed draws a new one at every start).
"""
import logging
import random

import numpy as np
import torch
from mmengine.dataset import InfiniteSampler
from mmengine.logging import print_log
from mmengine.runner import IterBasedTrainLoop
from mmengine.runner.base_loop import BaseLoop
from mmengine.runner.loops import _InfiniteDataloaderIterator
from mmengine.runner.utils import calc_dynamic_intervals
from torch import nn
from torch.utils.data import DataLoader

from soma.registry import register_loop

__all__ = ['FastResumeIterBasedTrainLoop', 'ResumableBatchSampler', 'derive_seed']


def derive_seed(*entropy) -> int:
    """A 32-bit seed that is a pure function of the given non-negative integers."""
    return int(np.random.SeedSequence([int(e) % (2**63) for e in entropy]).generate_state(1)[0])


def _seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _SeededDataset:
    """Dataset view whose items are ``(seed, index)``: seeds the RNGs, then loads ``index``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        seed, index = item
        _seed_everything(seed)
        return self.dataset[index]

    def __getattr__(self, name):  # metainfo, pipeline, ... of the real dataset
        if name == 'dataset':
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumableBatchSampler:
    """Batch sampler that yields ``[(seed, index), ...]`` and can skip batches cheaply."""

    def __init__(self, batch_sampler, seed, rank):
        self.batch_sampler = batch_sampler
        self.sampler = getattr(batch_sampler, 'sampler', None)  # for set_epoch
        self.seed = seed
        self.rank = rank
        self.next_batch = 0      # global index of the next batch to yield
        self.skip = 0            # batches still to skip (resume)

    def __len__(self):
        return len(self.batch_sampler)

    def __iter__(self):
        for batch in self.batch_sampler:
            if self.skip > 0:
                self.skip -= 1
                self.next_batch += 1
                continue
            b = self.next_batch
            self.next_batch += 1
            yield [(derive_seed(self.seed, self.rank, b, j), idx) for j, idx in enumerate(batch)]


def _clone_loader(loader, dataset, batch_sampler):
    """A DataLoader like ``loader`` (workers, collate, ...) over a new dataset/batch sampler."""
    kwargs = dict(num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                  pin_memory=loader.pin_memory, timeout=loader.timeout,
                  worker_init_fn=loader.worker_init_fn, persistent_workers=False)
    if loader.num_workers > 0:
        kwargs.update(multiprocessing_context=loader.multiprocessing_context,
                      prefetch_factor=loader.prefetch_factor,
                      persistent_workers=loader.persistent_workers)
    return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)


@register_loop
class FastResumeIterBasedTrainLoop(IterBasedTrainLoop):
    """``IterBasedTrainLoop`` (same arguments) that resumes by skipping indices, not data.

    See the module docstring. Use it as
    ``train_cfg = dict(type='FastResumeIterBasedTrainLoop', max_iters=..., val_interval=...)``.
    """

    def __init__(self, runner, dataloader, max_iters, val_begin=1, val_interval=1000,
                 dynamic_intervals=None):
        BaseLoop.__init__(self, runner, dataloader)  # builds the data loader from its config
        loader = self.dataloader
        if loader.batch_sampler is None:
            raise ValueError('FastResumeIterBasedTrainLoop needs a batched train_dataloader '
                             '(batch_size or batch_sampler set)')
        self._batch_sampler = ResumableBatchSampler(loader.batch_sampler, runner.seed or 0,
                                                     runner.rank)
        self.dataloader = _clone_loader(loader, _SeededDataset(loader.dataset),
                                        self._batch_sampler)
        # the rest as IterBasedTrainLoop.__init__, but the data loader iterator (and its
        # workers) only starts in run(), once the resume position is known
        self._max_iters = int(max_iters)
        if self._max_iters != max_iters:
            raise ValueError(f'max_iters must be an integer, got {max_iters}')
        self._max_epochs = 1
        self._epoch = 0
        self._iter = 0
        self.val_begin = val_begin
        self.val_interval = val_interval
        self.stop_training = False
        if hasattr(loader.dataset, 'metainfo'):
            self.runner.visualizer.dataset_meta = loader.dataset.metainfo
        self.dataloader_iterator = None
        self.dynamic_milestones, self.dynamic_intervals = calc_dynamic_intervals(
            self.val_interval, dynamic_intervals)

    def _sync_sampler_seed(self):
        """Use the seed of the runner (restored from the checkpoint when resuming)."""
        seed = self.runner.seed or 0
        self._batch_sampler.seed = seed
        sampler = self._batch_sampler.sampler
        diff_rank = self.runner._randomness_cfg.get('diff_rank_seed', False)
        if isinstance(sampler, InfiniteSampler) and not diff_rank and sampler.seed != seed:
            print_log(f'FastResumeIterBasedTrainLoop: sampler seed {sampler.seed} -> {seed} '
                      f'(the seed of the run)', logger='current', level=logging.WARNING)
            sampler.seed = seed
            sampler.indices = sampler._indices_of_rank()

    def run(self) -> nn.Module:
        """Train, skipping the batches of a resumed run without loading them."""
        self.runner.call_hook('before_train')
        self.runner.call_hook('before_train_epoch')
        self._sync_sampler_seed()
        if self._iter > 0:
            print_log(f'FastResumeIterBasedTrainLoop: skipping the indices of {self._iter} '
                      f'batches (no data is loaded)', logger='current')
            self._batch_sampler.skip = self._iter
        self.dataloader_iterator = _InfiniteDataloaderIterator(self.dataloader)
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            data_batch = next(self.dataloader_iterator)
            _seed_everything(derive_seed(self._batch_sampler.seed, self.runner.rank,
                                         self._iter, 2**32))
            self.run_iter(data_batch)
            self._decide_current_val_interval()
            if (self.runner.val_loop is not None and self._iter >= self.val_begin
                    and (self._iter % self.val_interval == 0 or self._iter == self._max_iters)):
                self.runner.val_loop.run()
        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model
