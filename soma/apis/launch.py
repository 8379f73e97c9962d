"""What ``tools/train.py``, ``tools/test.py`` and the demos share: config, work dir, launcher,
run length, CPU threads, checks.

The config's own ``default_scope`` (``mmseg`` for ``configs/``, ``mmdet`` for
``DGOD/configs``) decides which registries are used; ``import soma`` has registered our
modules in both.
"""
import contextlib
import copy
import logging
import os
import os.path as osp
import re
import uuid
from contextlib import nullcontext
from typing import ContextManager, Iterator, List, Optional, Sequence, Union

import torch
import torch.distributed as dist
from mmcv.ops import nms, roi_align
from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttnFunction
from mmengine.config import Config
from mmengine.device import get_device
from mmengine.logging import print_log
from mmengine.registry import build_from_cfg

from soma.utils.cli import USER_ERRORS, one_line, prefix_error, run_cli

__all__ = ['as_config', 'load_config', 'set_work_dir', 'setup_launcher', 'launch_rank',
           'leaf_datasets', 'check_data_roots', 'check_max_iters', 'param_schedulers',
           'set_max_iters', 'cpu_thread_count', 'cpu_threads', 'run_cli',
           'unique_visualizer_name', 'amp_dtype', 'enable_amp', 'amp_autocast',
           'CONFIG_SUFFIXES', 'config_key_at_fault', 'config_keys_named']

# the config files mmengine reads
CONFIG_SUFFIXES = ('.py', '.json', '.yaml', '.yml')


def unique_visualizer_name(cfg: Config) -> Config:
    """Give the config's visualizer a name of its own.

    mmengine visualizers are named singletons: a second Runner in the same process (the
    demo trains then tests; tests run many) would otherwise get the first one back, with
    its ``save_dir``, and write images and scalars into the first run's folder. A config
    without a visualizer gets mmengine's default one (named after the config file and the
    second the run started: two runs of one config in one second shared it), named so too.
    """
    if not cfg.get('visualizer'):
        cfg.visualizer = dict(type='Visualizer', vis_backends=[dict(type='LocalVisBackend')])
    name = cfg.visualizer.get('name', 'visualizer')
    cfg.visualizer['name'] = f'{name}_{uuid.uuid4().hex[:8]}'
    return cfg


def as_config(config: Union[str, os.PathLike, Config, dict], cfg_options: Optional[dict] = None
              ) -> Config:
    """A ``Config`` from a path (``Config.fromfile``), a ``Config`` or a dict (copied), with
    ``cfg_options`` merged in; a missing file is a one-line error naming it."""
    if isinstance(config, (str, os.PathLike)):
        config = os.fspath(config)
        if not osp.isfile(config):
            raise FileNotFoundError(f'config not found: {config}'
                                    + (' (a folder)' if osp.isdir(config) else ''))
        if not config.endswith(CONFIG_SUFFIXES):
            raise ValueError(f'{config}: not a config file (expected {", ".join(CONFIG_SUFFIXES)})')
        try:
            cfg = Config.fromfile(config)
        except USER_ERRORS as e:
            if config not in one_line(e):
                prefix_error(e, config)
            raise
    elif isinstance(config, Config):
        cfg = copy.deepcopy(config)
    elif isinstance(config, dict):
        cfg = Config(copy.deepcopy(config))
    else:
        raise TypeError(f'config must be a path, a Config or a dict, got {type(config).__name__}')
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def _config_nodes(node, path=''):
    """``(dotted path, dict)`` of every dict in a config tree, lists indexed (``a.0.b``)."""
    if isinstance(node, dict):
        yield path, node
        children = node.items()
    elif isinstance(node, (list, tuple)):
        children = enumerate(node)
    else:
        return
    for key, child in children:
        yield from _config_nodes(child, f'{path}.{key}' if path else str(key))


def _path_of(built: dict, tree: dict) -> Optional[str]:
    """The one path of ``tree`` whose dict is ``built`` (a config being built): equal, else
    of the same type with ``built`` holding all its items (defaults added by the builder)."""
    nodes = [(p, n) for p, n in _config_nodes(tree) if p and n.get('type') == built.get('type')]
    for same in (lambda n: n == built,
                 lambda n: all(k in built and built[k] == v for k, v in n.items())):
        paths = [p for p, n in nodes if same(n)]
        if len(paths) == 1:
            return paths[0]
        if paths:
            return None
    return None


def config_key_at_fault(error: BaseException, cfg: Union[Config, dict],
                        cfg_options: Optional[dict] = None) -> Optional[str]:
    """Where in ``cfg`` ``error`` comes from, if it was raised while building from it: the
    ``--cfg-options`` item inside the sub-config mmengine was building (``build_from_cfg``),
    else that sub-config's path and type; None when raised outside any build."""
    being_built = []
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is build_from_cfg.__code__:
            being_built.append(tb.tb_frame.f_locals.get('cfg'))
        tb = tb.tb_next
    tree = cfg.to_dict() if isinstance(cfg, Config) else cfg
    for built in reversed(being_built):  # innermost first
        path = _path_of(built, tree) if isinstance(built, dict) else None
        if path is None:
            continue
        options = [k for k in cfg_options or {} if k == path or k.startswith(path + '.')]
        if len(options) > 1:  # the one whose last name the message says, if any
            said = [k for k in options
                    if re.search(rf'\b{re.escape(k.rsplit(".", 1)[-1])}\b', one_line(error))]
            options = said if len(said) == 1 else options
        if len(options) == 1:
            return f'--cfg-options {options[0]}={cfg_options[options[0]]}'
        return f'{path} ({built.get("type")})'
    return None


@contextlib.contextmanager
def config_keys_named(cfg: Union[Config, dict], cfg_options: Optional[dict] = None
                      ) -> Iterator[None]:
    """A user error raised in the block while building from ``cfg`` names the config key at
    fault before its message (:func:`config_key_at_fault`)."""
    try:
        yield
    except USER_ERRORS as error:
        where = config_key_at_fault(error, cfg, cfg_options)
        if where is not None:
            prefix_error(error, where)
        raise


def load_config(config: Union[str, os.PathLike], cfg_options: Optional[dict] = None,
                launcher: str = 'none') -> Config:
    """A config file for a tool: :func:`as_config` + launcher + a visualizer of its own;
    errors name the file."""
    cfg = as_config(os.fspath(config), cfg_options)
    cfg.launcher = launcher
    unique_visualizer_name(cfg)
    if 'default_scope' not in cfg:
        raise ValueError(f'{config}: no default_scope (set default_scope = "mmseg" or "mmdet")')
    return cfg


def set_work_dir(cfg: Config, work_dir: Optional[str] = None) -> str:
    """CLI ``--work-dir`` > config ``work_dir`` > ``./work_dirs/<config name>``."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(cfg.filename))[0])
    return cfg.work_dir


def setup_launcher(cfg: Config) -> Config:
    """Make a distributed launch work without GPU: gloo backend, DDP without device ids.

    mmengine 0.10 calls ``torch.cuda.set_device`` when it initialises the process group
    and gives DDP ``device_ids=[LOCAL_RANK]``; neither works on a CPU-only machine. So when
    ``cfg.launcher`` is not 'none' and there is no GPU, the gloo process group is started
    here (mmengine then finds it initialised) and DDP is built without device ids.
    """
    if cfg.launcher == 'none' or torch.cuda.is_available():
        return cfg
    cfg.setdefault('env_cfg', {})
    cfg.env_cfg.setdefault('dist_cfg', {})
    cfg.env_cfg.dist_cfg['backend'] = 'gloo'
    if cfg.launcher != 'pytorch':
        raise ValueError(f'launcher {cfg.launcher!r} needs GPUs; on CPU use --launcher pytorch '
                         f'(tools/dist_train.sh)')
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    return cfg


def launch_rank() -> int:
    """This process's global rank as its launcher gives it (torchrun ``RANK``, slurm
    ``SLURM_PROCID``, mpi ``OMPI_COMM_WORLD_RANK``), before any process group exists; 0 when
    launched alone."""
    for name in ('RANK', 'SLURM_PROCID', 'OMPI_COMM_WORLD_RANK'):
        if os.environ.get(name, '').isdigit():
            return int(os.environ[name])
    return 0


def param_schedulers(cfg: Config) -> list:
    """The config's ``param_scheduler`` as a list (mmengine takes one dict or a list)."""
    schedulers = cfg.get('param_scheduler') or []
    return [schedulers] if isinstance(schedulers, dict) else list(schedulers)


def check_max_iters(max_iters: Optional[int], name: str = 'max_iters') -> Optional[int]:
    """``max_iters`` as an int >= 1 (``None`` passes through: the config's own); the error
    names it as ``name``."""
    if max_iters is None:
        return None
    if isinstance(max_iters, bool) or not isinstance(max_iters, (int, float)) \
            or int(max_iters) != max_iters or max_iters < 1:
        raise ValueError(f'{name} must be an integer >= 1, got {max_iters!r}')
    return int(max_iters)


def set_max_iters(cfg: Config, max_iters: Optional[int], val: bool = True) -> Config:
    """Set the run length to ``max_iters`` and scale the whole schedule with it
    (``tools/train.py --iters``, ``tools/demo.py --iters``).

    ``max_iters=None`` keeps the config's own length. With ``ratio = max_iters /
    train_cfg.max_iters``, every iteration count of the schedule is multiplied by ``ratio``
    (rounded; at least 1): each scheduler's ``begin``/``end``/``milestones`` (LR and weight
    decay alike), the validation and checkpoint intervals (at most ``max_iters``) and an
    ``EMAHook``'s ``begin_iter``; warm-up, steps, EMA start and checkpoints land at the same
    fraction of the run. ``val=False`` drops the validation during training (the demos test
    afterwards).
    """
    train_cfg = cfg.train_cfg
    if 'max_iters' not in train_cfg:
        raise ValueError(f'--iters needs an iteration-based train_cfg (max_iters), the config '
                         f'has {dict(train_cfg)}')
    old = check_max_iters(train_cfg.max_iters, 'train_cfg.max_iters')
    max_iters = check_max_iters(max_iters) or old
    ratio = max_iters / old

    def scale(n):
        return max(1, int(round(n * ratio)))

    for i, scheduler in enumerate(param_schedulers(cfg)):
        if scheduler.get('by_epoch', True):
            raise ValueError(f'--iters: param_scheduler[{i}] ({scheduler.get("type")}) counts '
                             f'epochs; only by_epoch=False schedulers can be rescaled')
        scheduler['begin'] = int(round(scheduler.get('begin', 0) * ratio))
        scheduler['end'] = max(scheduler['begin'] + 1,
                               int(round(scheduler.get('end', old) * ratio)))
        if 'milestones' in scheduler:
            scheduler['milestones'] = [scale(m) for m in scheduler['milestones']]
    train_cfg.max_iters = max_iters
    if 'val_interval' in train_cfg:
        train_cfg.val_interval = min(max_iters, scale(train_cfg.val_interval))
    checkpoint = (cfg.get('default_hooks') or {}).get('checkpoint')
    if checkpoint and 'interval' in checkpoint:
        checkpoint['interval'] = min(max_iters, scale(checkpoint['interval']))
    for hook in cfg.get('custom_hooks') or []:
        if 'begin_iter' in hook:
            hook['begin_iter'] = int(round(hook['begin_iter'] * ratio))
    if not val:
        if checkpoint:
            checkpoint.pop('save_best', None)
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    return cfg


def cpu_thread_count(cfg: Optional[dict] = None) -> int:
    """How many CPU threads torch should use, so that a busy machine is not oversubscribed.

    1. ``OMP_NUM_THREADS`` when set (torchrun sets 1 per process when it starts several):
       torch already follows it;
    2. else the config's ``cpu_threads`` (the tiny demo configs say 1: their operations are
       too small to gain from a thread pool, whose waiting then costs more than the work);
    3. else the free cores: the cores this process may run on minus the 1-minute load
       average (rounded), at least 1 (torch's default takes every core, however busy).
    """
    if os.environ.get('OMP_NUM_THREADS'):
        return torch.get_num_threads()
    value = (cfg or {}).get('cpu_threads', 'auto')
    if value != 'auto':
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'cpu_threads must be an integer >= 1 or "auto", got {value!r}')
        return value
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    busy = os.getloadavg()[0] if hasattr(os, 'getloadavg') else 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


@contextlib.contextmanager
def cpu_threads(cfg: Optional[dict] = None) -> Iterator[int]:
    """Run the block with :func:`cpu_thread_count` torch threads (logged); the previous count
    is restored after."""
    previous = torch.get_num_threads()
    count = cpu_thread_count(cfg)
    torch.set_num_threads(count)
    print_log(f'torch CPU threads: {count} (OMP_NUM_THREADS, else the config\'s cpu_threads, '
              f'else the free cores)', logger='current')
    try:
        yield count
    finally:
        torch.set_num_threads(previous)


def _mmcv_cuda_ops_take(dtype: torch.dtype) -> bool:
    """Whether mmcv's CUDA kernels our models use (multi-scale deformable attention of
    Mask2Former and Co-DETR, RoIAlign, nms) run in ``dtype``; mmcv 2.1 dispatches them for
    float32/float64/float16 only, so bfloat16 autocast would fail inside them."""
    try:
        value = torch.zeros(1, 4, 1, 2, device='cuda', dtype=dtype)
        shapes = torch.tensor([[2, 2]], device='cuda')
        start = torch.tensor([0], device='cuda')
        loc = torch.full((1, 1, 1, 1, 1, 2), 0.5, device='cuda', dtype=dtype)
        weight = torch.ones(1, 1, 1, 1, 1, device='cuda', dtype=dtype)
        MultiScaleDeformableAttnFunction.apply(value, shapes, start, loc, weight, 64)
        rois = torch.tensor([[0, 0, 0, 2, 2]], device='cuda', dtype=dtype)
        roi_align(torch.zeros(1, 1, 4, 4, device='cuda', dtype=dtype), rois, (2, 2), 1.0, 0,
                  'avg', True)
        nms(rois[:, 1:], rois[:, 0] + 1, 0.5)
        torch.cuda.synchronize()
    except RuntimeError:
        return False
    return True


def amp_dtype(device_type: str) -> str:
    """The autocast dtype of ``--amp`` on ``device_type``: 'bfloat16' or 'float16'.

    CPU: bfloat16. CUDA: bfloat16 when the GPU supports it and mmcv's CUDA kernels accept
    it, else float16 (trained with dynamic loss scaling). Other devices: float16.
    """
    if device_type == 'cpu':
        return 'bfloat16'
    if device_type == 'cuda' and torch.cuda.is_bf16_supported() \
            and _mmcv_cuda_ops_take(torch.bfloat16):
        return 'bfloat16'
    return 'float16'


def enable_amp(cfg: Config, device_type: Optional[str] = None) -> str:
    """``--amp`` for training: mixed precision through the config's optimizer wrapper.

    GPU (and NPU/MLU): mmengine's ``AmpOptimWrapper`` with ``dtype`` from :func:`amp_dtype`
    and ``loss_scale='dynamic'``; CPU: ``AutocastOptimWrapper`` (bfloat16 autocast, no
    scaling: mmengine's wrapper needs a GPU), segmentation only (mmcv's CPU detection
    kernels have no bfloat16). A config already using one is kept. Returns the dtype name.
    """
    device_type = device_type or get_device()
    dtype = amp_dtype(device_type)
    wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper in ('AmpOptimWrapper', 'AutocastOptimWrapper'):
        print_log('AMP is already enabled in the config', logger='current',
                  level=logging.WARNING)
        return str(cfg.optim_wrapper.get('dtype', 'float16')).replace('torch.', '')
    if wrapper != 'OptimWrapper':
        raise ValueError(f'--amp needs optim_wrapper.type OptimWrapper, the config has '
                         f'{wrapper}')
    if device_type == 'cpu' and cfg.get('default_scope') == 'mmdet':
        raise ValueError('--amp on the CPU is bfloat16 autocast, and the CPU kernels of mmcv '
                         '2.1 (nms, RoIAlign) take float32/float16 only: detection with --amp '
                         'needs a GPU (float16 there)')
    cfg.optim_wrapper.dtype = dtype
    if device_type == 'cpu':
        cfg.optim_wrapper.type = 'AutocastOptimWrapper'
    else:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    return dtype


def amp_autocast(enabled: bool = True, device_type: Optional[str] = None) -> ContextManager:
    """``--amp`` for testing: ``torch.autocast`` on the device in :func:`amp_dtype`'s dtype
    (a no-op context when ``enabled`` is False)."""
    if not enabled:
        return nullcontext()
    device_type = device_type or get_device()
    return torch.autocast(device_type, dtype=getattr(torch, amp_dtype(device_type)))


def leaf_datasets(dataset: Optional[dict]) -> List[dict]:
    """Leaf dataset configs of a (possibly wrapped / concatenated) dataset config."""
    if not isinstance(dataset, dict):
        return []
    if 'datasets' in dataset:
        return [leaf for d in dataset['datasets'] for leaf in leaf_datasets(d)]
    if 'dataset' in dataset:
        return leaf_datasets(dataset['dataset'])
    return [dataset]


DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


def check_data_roots(cfg: Config, loaders: Sequence[str] = DATALOADERS,
                     labels: bool = True) -> None:
    """Raise ``FileNotFoundError`` naming the first dataset folder/file that does not exist
    (``labels=False``: label folders are not needed, as for an unlabelled test split)."""
    keys = ('img_path', 'img', 'seg_map_path') if labels else ('img_path', 'img')
    for loader in loaders:
        loader_cfg = cfg.get(loader)
        if not loader_cfg:
            continue
        for ds in leaf_datasets(loader_cfg.get('dataset')):
            root = ds.get('data_root') or ''
            if root and not osp.isdir(root):
                raise FileNotFoundError(
                    f'{loader}: data_root {root} ({ds.get("type")}) does not exist; prepare '
                    f'the dataset or set data_root with --cfg-options')
            ann = ds.get('ann_file') or ''
            if ann and not osp.isfile(osp.join(root, ann)):
                raise FileNotFoundError(f'{loader}: ann_file {osp.join(root, ann)} does not exist')
            prefix = ds.get('data_prefix') or {}
            for key in keys:
                sub = prefix.get(key)
                if sub and not osp.exists(osp.join(root, sub)):
                    raise FileNotFoundError(
                        f'{loader}: {key} folder {osp.join(root, sub)} does not exist')
