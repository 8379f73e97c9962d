"""What ``tools/train.py`` and ``tools/test.py`` share: config, work dir, launcher, checks.

The config's own ``default_scope`` (``mmseg`` for ``configs/``, ``mmdet`` for
``DGOD/configs``) decides which registries are used; ``import soma`` has registered our
modules in both.
"""
import os
import os.path as osp
import sys
import uuid

import torch

__all__ = ['load_config', 'set_work_dir', 'setup_launcher', 'check_data_roots', 'run_cli',
           'unique_visualizer_name']


def unique_visualizer_name(cfg):
    """Give the config's visualizer a name of its own.

    mmengine visualizers are named singletons: a second Runner in the same process (the
    demo trains then tests; tests run many) would otherwise get the first one back, with
    its ``save_dir``, and write images and scalars into the first run's folder.
    """
    if cfg.get('visualizer'):
        name = cfg.visualizer.get('name', 'visualizer')
        cfg.visualizer['name'] = f'{name}_{uuid.uuid4().hex[:8]}'
    return cfg


def load_config(config, cfg_options=None, launcher='none'):
    """``Config.fromfile`` + ``--cfg-options`` + launcher; errors name the file."""
    import soma  # noqa: F401  (registers everything before the config is used)
    from mmengine.config import Config
    config = os.fspath(config)
    if not osp.isfile(config):
        raise FileNotFoundError(f'config not found: {config}')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    unique_visualizer_name(cfg)
    if 'default_scope' not in cfg:
        raise ValueError(f'{config}: no default_scope (set default_scope = "mmseg" or "mmdet")')
    return cfg


def set_work_dir(cfg, work_dir=None):
    """CLI ``--work-dir`` > config ``work_dir`` > ``./work_dirs/<config name>``."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(cfg.filename))[0])
    return cfg.work_dir


def setup_launcher(cfg):
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
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    return cfg


def _dataset_cfgs(dataset):
    """Leaf dataset configs of a (possibly wrapped / concatenated) dataset config."""
    if not isinstance(dataset, dict):
        return []
    if 'datasets' in dataset:
        return [leaf for d in dataset['datasets'] for leaf in _dataset_cfgs(d)]
    if 'dataset' in dataset:
        return _dataset_cfgs(dataset['dataset'])
    return [dataset]


def check_data_roots(cfg, loaders=('train_dataloader', 'val_dataloader', 'test_dataloader')):
    """Raise ``FileNotFoundError`` naming the first dataset folder/file that does not exist."""
    for loader in loaders:
        loader_cfg = cfg.get(loader)
        if not loader_cfg:
            continue
        for ds in _dataset_cfgs(loader_cfg.get('dataset')):
            root = ds.get('data_root') or ''
            if root and not osp.isdir(root):
                raise FileNotFoundError(
                    f'{loader}: data_root {root} ({ds.get("type")}) does not exist; prepare '
                    f'the dataset or set data_root with --cfg-options')
            ann = ds.get('ann_file') or ''
            if ann and not osp.isfile(osp.join(root, ann)):
                raise FileNotFoundError(f'{loader}: ann_file {osp.join(root, ann)} does not exist')
            prefix = ds.get('data_prefix') or {}
            for key in ('img_path', 'img', 'seg_map_path'):
                sub = prefix.get(key)
                if sub and not osp.exists(osp.join(root, sub)):
                    raise FileNotFoundError(
                        f'{loader}: {key} folder {osp.join(root, sub)} does not exist')


def run_cli(fn, *args, **kwargs):
    """Run ``fn``; a user error becomes ``error: <one line>`` on stderr and exit code 1."""
    from mmengine.config.utils import ConfigParsingError
    try:
        fn(*args, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, ImportError, SyntaxError,
            ConfigParsingError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        msg = ' '.join(msg.split()) or type(e).__name__
        print(f'error: {msg}', file=sys.stderr)
        return 1
    return 0
