"""Training checkpoints that survive a kill or a full disk, and loads that are checked.

mmengine 0.10's ``CheckpointHook`` removes the checkpoints beyond ``max_keep_ckpts`` *before*
it writes the new one, and writes ``last_checkpoint`` in place: one kill during a save with
``max_keep_ckpts=1`` can leave no checkpoint at all and a ``last_checkpoint`` that names a
deleted file. :class:`SafeCheckpointHook` keeps mmengine's options and changes the order:

1. the new checkpoint is written to a temporary file in the same folder, flushed and renamed
   (mmengine's local file backend is :class:`soma.utils.checkpoint_io.AtomicLocalBackend`);
2. ``last_checkpoint`` is replaced atomically, naming it;
3. only then the checkpoints beyond ``max_keep_ckpts`` are removed; the same for the best
   checkpoint (``save_best``): the previous best file is removed after the new one is written.

At every moment of a save, ``last_checkpoint`` names a complete file. A full disk ends the
run with one line naming the folder and the bytes needed, and leaves no partial file.

:func:`find_resumable_checkpoint` is what ``tools/train.py --resume`` (auto) resumes from:
the newest complete checkpoint of the work dir (a damaged or missing newer one is skipped
with one warning). :class:`CheckpointCheckHook` checks what ``load_from`` / ``resume`` loads
as ``tools/test.py`` does, before any weight is touched.
"""
import copy
import glob
import logging
import os
import os.path as osp
import re
import zipfile
from typing import List, Optional

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.runner import Runner

from soma.checkpoints import check_checkpoint_for_model
from soma.engine.hooks import unwrap_model
from soma.registry import register_hook
from soma.utils.atomic import atomic_output
from soma.utils.checkpoint_io import CheckpointError, get_state_dict

__all__ = ['SafeCheckpointHook', 'CheckpointCheckHook', 'find_resumable_checkpoint',
           'is_complete_checkpoint', 'LAST_CHECKPOINT']

LAST_CHECKPOINT = 'last_checkpoint'  # mmengine's pointer file in the work dir
_BEST_INFO = ('best_score', 'best_ckpt')  # mmengine's message-hub keys of the best checkpoint
_STEP_FILE = re.compile(r'(?:iter|epoch)_(\d+)\.pth$')
# what soma.utils.atomic leaves behind when a save is killed: .<target>.<random>.tmp
_LEFTOVER = re.compile(r'\.(?:(?:iter|epoch)_\d+\.pth|best_.*\.pth|last_checkpoint)\.\w+\.tmp')


@register_hook
class SafeCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments) with crash-safe saves (module docstring).

    The released configs use it (``default_hooks.checkpoint.type``), and ``tools/train.py``
    puts it in place of a plain ``CheckpointHook`` of any other config. Before training it
    removes the temporary files a killed run may have left in its folder (the work dir's
    lock, :mod:`soma.utils.run_lock`, means no other run is writing them).
    """

    def before_train(self, runner: Runner) -> None:
        """mmengine's set-up, then the leftovers of a killed save are removed."""
        super().before_train(runner)
        if not is_main_process():
            return
        for folder in {self.out_dir, runner.work_dir}:
            if not osp.isdir(folder):
                continue
            for name in os.listdir(folder):
                if _LEFTOVER.fullmatch(name):
                    os.remove(osp.join(folder, name))
                    print_log(f'removed {name}: a checkpoint save that was cut short',
                              logger='current', level=logging.WARNING)

    def _save_checkpoint_with_step(self, runner: Runner, step: int, meta: dict) -> None:
        removed = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            while len(self.keep_ckpt_ids) >= self.max_keep_ckpts:  # (a deque with maxlen)
                removed.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir, ckpt_filename, self.file_client_args,
            save_optimizer=self.save_optimizer, save_param_scheduler=self.save_param_scheduler,
            meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        with atomic_output(osp.join(runner.work_dir, LAST_CHECKPOINT)) as tmp, \
                open(tmp, 'w') as f:
            f.write(self.last_ckpt)
        for old in removed:  # the new checkpoint is complete and named: now the old can go
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # deepspeed saves folders
                self.file_backend.rmtree(path)

    def _save_best_checkpoint(self, runner: Runner, metrics: dict) -> None:
        # mmengine removes the previous best file before it writes the new one; its removals
        # are held back here and done once the method (and so the new file) has completed.
        # When the write fails, the previous best stays the best (its path and score).
        if not self.save_best:
            return
        info = runner.message_hub.runtime_info
        hook_state = {k: copy.copy(v) for k, v in vars(self).items()
                      if k in ('best_ckpt_path', 'best_ckpt_path_dict')}
        info_state = {k: v for k, v in info.items() if k.startswith(_BEST_INFO)}
        backend = self.file_backend
        self.file_backend = _RemovalsHeldBack(backend)
        try:
            super()._save_best_checkpoint(runner, metrics)
            held_back = self.file_backend.held_back
        except BaseException:
            vars(self).update(hook_state)
            for key in [k for k in info if k.startswith(_BEST_INFO)]:
                del info[key]
            info.update(info_state)
            raise
        finally:
            self.file_backend = backend
        kept = {getattr(self, 'best_ckpt_path', None),
                *(getattr(self, 'best_ckpt_path_dict', None) or {}).values()}
        for remove, path in held_back:
            if path not in kept:
                remove(path)


class _RemovalsHeldBack:
    """A file backend whose ``remove`` / ``rmtree`` are recorded instead of done."""

    def __init__(self, backend) -> None:
        self._backend = backend
        self.held_back = []

    def __getattr__(self, name: str):
        return getattr(self._backend, name)

    def remove(self, path: str) -> None:
        self.held_back.append((self._backend.remove, path))

    def rmtree(self, path: str) -> None:
        self.held_back.append((self._backend.rmtree, path))


def is_complete_checkpoint(path: str) -> bool:
    """Whether ``path`` is a whole torch checkpoint file: a zip whose end record and pickle
    are there (a file cut short by a kill or a full disk has no end record). Cheap: it reads
    the zip's directory, not the tensors."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith('data.pkl') for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _candidates(work_dir: str) -> List[str]:
    """The checkpoints of a work dir, newest first: the one ``last_checkpoint`` names, then
    every ``iter_<n>.pth`` / ``epoch_<n>.pth`` by step."""
    found = []
    pointer = osp.join(work_dir, LAST_CHECKPOINT)
    if osp.isfile(pointer):
        with open(pointer, encoding='utf-8') as f:
            named = f.read().strip()
        if named:
            found.append(named if osp.isabs(named) else osp.join(work_dir, named))
    steps = []
    for path in glob.glob(osp.join(glob.escape(work_dir), '*.pth')):
        match = _STEP_FILE.search(osp.basename(path))
        if match:
            steps.append((int(match.group(1)), path))
    found += [path for _, path in sorted(steps, reverse=True) if path not in found]
    return found


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """The newest complete checkpoint of ``work_dir`` (None when there is none); a newer one
    that is missing or damaged is skipped with one warning."""
    for path in _candidates(os.fspath(work_dir)):
        if is_complete_checkpoint(path):
            return path
        why = 'missing' if not osp.exists(path) else 'damaged (incomplete)'
        print_log(f'resume: skipping {path}: {why}; trying an older checkpoint',
                  logger='current', level=logging.WARNING)
    return None


@register_hook
class CheckpointCheckHook(Hook):
    """Check a checkpoint that ``load_from`` / ``resume`` loads, before the model takes it.

    ``tools/train.py`` adds it. One line, before training starts, for: another architecture,
    resolution, adapter rank or head (any key whose shape differs from the model's, via
    :func:`soma.checkpoints.check_checkpoint_for_model`); a checkpoint that shares no key
    with the model; and, when resuming, a checkpoint without training state. Runs after the
    hooks that complete the checkpoint (``LegacyKeysHook``, ``LoadBackboneHook``) and before
    ``EMAHook`` loads its copy.
    """

    priority = 'HIGH'

    def after_load_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        """Refuse, in one line, what cannot load into the model (class docstring)."""
        cfg = runner.cfg
        path = cfg.get('load_from') or 'the loaded checkpoint'
        if cfg.get('resume'):
            meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'), dict) else {}
            lacking = [k for k in ('epoch', 'iter') if k not in meta]
            if lacking:
                raise CheckpointError(
                    f'{path} has no training state (no meta.{lacking[0]}): it can start a run '
                    f'(load_from={path}, without --resume) but not resume one')
        model = unwrap_model(runner.model)
        state_dict = get_state_dict(checkpoint)
        if not isinstance(state_dict, dict) or not set(state_dict) & set(model.state_dict()):
            raise CheckpointError(
                f'{path} shares no weight with the model built from '
                f'{getattr(cfg, "filename", None) or "the config"} (another architecture?)')
        check_checkpoint_for_model(model, state_dict, cfg, checkpoint_path=path,
                                   config_path=getattr(cfg, 'filename', None), strict=False)
