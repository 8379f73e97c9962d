"""Every CLI on every class of bad input it can meet (issue 19 item 4).

One table (tool x bad-input class), each case run as a user runs the tool: ``python
tools/<tool> ...`` in a subprocess (at least one case per tool; ``dist_*.sh`` through bash and
torchrun), the others through the tool's ``main(argv)`` in this process (the same code, the
same output streams, without the interpreter start). Each case asserts, from outside the code
under test:

* exit code 1;
* exactly one stderr line starts with ``error: ``, it is the last one, and it names the file,
  the config key (as passed to ``--cfg-options``) or the argument at fault;
* no ``Traceback`` anywhere in the output;
* no file or folder created, changed or removed in the case's folder (the outputs, the work
  dir) nor among the inputs (listing, sizes and modification times before and after); for
  ``dist_*.sh`` files only: torchrun starts its processes at once, and one that is not rank 0
  may make the (then empty) work dir before rank 0 takes the work dir's lock.

Several-input tools (visualize, collect_results, the dataset converters) get cases mixing
good and bad inputs: the good ones are processed, every bad one is named in the last line,
and the exit code is 1. A real bug (a RuntimeError raised from a model's own code) still
shows its traceback, and ``run_cli`` treats as user errors only an independent list of
exception types.
"""
import ast
import importlib.util
import json
import os
import os.path as osp
import socket
import subprocess
import sys
import traceback

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import soma  # noqa: F401
from soma.apis.demo import demo_config
from soma.apis.inference import init_model
from soma.checkpoints import extract_file
from soma.datasets import make_synthetic_dg_benchmark
from soma.datasets.convert.common import run_tasks
from soma.utils.checkpoint_io import save_checkpoint_file
from soma.utils.cli import USER_ERRORS, run_cli

sys.path.insert(0, osp.dirname(__file__))
from _ckpt_fixtures import converted_backbone, release_full_checkpoint  # noqa: E402
from _tool_runner import REPO  # noqa: E402
from conftest import TINY_FCN_HEAD  # noqa: E402

ONE_THREAD = True
SIZE = 64
TOOLS = osp.join(REPO, 'tools')


# ------------------------------------------------------------------ the inputs, made once
class Evil:
    """Unpickling this runs a shell command (it must never run: weights-only loading)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


def _write_cfg(data_root, path, **changes):
    cfg = demo_config(data_root, osp.dirname(path), 1, val=True, image_size=SIZE)
    cfg.model.decode_head = dict(TINY_FCN_HEAD)
    cfg.default_hooks.logger.interval = 1
    cfg.merge_from_dict(changes)
    os.makedirs(osp.dirname(path), exist_ok=True)
    cfg.dump(path)
    return path


def _model_checkpoint(config, path, **meta):
    """The randomly initialised model of ``config`` saved as a full checkpoint."""
    model = init_model(config)
    save_checkpoint_file({'state_dict': model.state_dict(), 'meta': dict(meta)}, path)
    return path


def _png(path, size=(SIZE, SIZE), seed=0):
    rng = np.random.RandomState(seed)
    cv2.imwrite(str(path), rng.randint(0, 255, size + (3, ), dtype=np.uint8))
    return str(path)


def _label_png(path, ids, mode='P'):
    os.makedirs(osp.dirname(path), exist_ok=True)
    img = Image.fromarray(np.asarray(ids, dtype=np.uint8), mode='L')
    if mode == 'P':
        img = img.convert('P')
        img.putpalette([(i * 7) % 256 for i in range(768)])
    img.save(path)


def _dataset_replicas(root, p):
    """A tiny raw copy of each converted dataset: one good label and two bad ones (random
    bytes; a text file) per dataset; ``p['<dataset>_root']`` and ``p['bad_<dataset>']``."""
    ids = np.array([[7, 8], [11, 26]])
    junk = np.random.RandomState(2).bytes(512)

    def bad_pair(folder, random_name, text_name):
        os.makedirs(folder, exist_ok=True)
        with open(osp.join(folder, random_name), 'wb') as fh:
            fh.write(junk)
        with open(osp.join(folder, text_name), 'w') as fh:
            fh.write('not a label\n')
        return [osp.join(folder, random_name), osp.join(folder, text_name)]

    gta = str(root / 'gta')
    _label_png(osp.join(gta, 'labels', '00001.png'), ids)
    p['gta_root'], p['bad_gta'] = gta, bad_pair(osp.join(gta, 'labels'), '00002.png', '00003.png')
    syn = str(root / 'synthia')
    os.makedirs(osp.join(syn, 'GT', 'LABELS'))
    label = np.zeros((2, 2, 3), np.uint16)
    label[..., 2] = [[3, 4], [2, 10]]
    cv2.imwrite(osp.join(syn, 'GT', 'LABELS', '0000001.png'), label)
    p['synthia_root'] = syn
    p['bad_synthia'] = bad_pair(osp.join(syn, 'GT', 'LABELS'), '0000002.png', '0000003.png')
    urb = str(root / 'urbansyn')
    _label_png(osp.join(urb, 'ss', 'ss_0001.png'), ids, mode='L')
    p['urbansyn_root'] = urb
    p['bad_urbansyn'] = bad_pair(osp.join(urb, 'ss'), 'ss_0002.png', 'ss_0003.png')
    mapi = str(root / 'mapillary')
    os.makedirs(mapi)
    with open(osp.join(mapi, 'config_v1.2.json'), 'w') as fh:
        json.dump({'labels': [{'readable': n} for n in ('Road', 'Sky', 'Car', 'Bird')]}, fh)
    _label_png(osp.join(mapi, 'training', 'v1.2', 'labels', 'a.png'), [[0, 1], [2, 3]])
    _label_png(osp.join(mapi, 'validation', 'v1.2', 'labels', 'b.png'), [[0, 1], [2, 3]])
    p['mapillary_root'] = mapi
    p['bad_mapillary'] = bad_pair(osp.join(mapi, 'validation', 'v1.2', 'labels'), 'c.png',
                                  'd.png')
    half = str(root / 'mapillary_half')
    os.makedirs(osp.join(half, 'img'))
    cv2.imwrite(osp.join(half, 'img', 'a.jpg'), np.full((4, 4, 3), 90, np.uint8))
    _label_png(osp.join(half, 'lbl', 'a.png'), np.zeros((4, 4)))
    p['half_img'], p['half_lbl'] = osp.join(half, 'img'), osp.join(half, 'lbl')
    p['bad_half'] = bad_pair(p['half_img'], 'b.jpg', 'c.jpg')
    for name in ('b.png', 'c.png'):
        _label_png(osp.join(p['half_lbl'], name), np.zeros((4, 4)))
    city = str(root / 'cityscapes')
    folder = osp.join(city, 'gtFine', 'train', 'aachen')
    os.makedirs(folder)
    with open(osp.join(folder, 'aachen_000000_000019_gtFine_polygons.json'), 'w') as fh:
        json.dump({'imgHeight': 4, 'imgWidth': 4, 'objects': [
            {'label': 'road', 'polygon': [[0, 0], [3, 0], [3, 3]]}]}, fh)
    p['cityscapes_root'] = city
    p['bad_cityscapes'] = bad_pair(folder, 'aachen_000001_000019_gtFine_polygons.json',
                                   'aachen_000002_000019_gtFine_polygons.json')


@pytest.fixture(scope='module')
def f(tmp_path_factory):
    """Every input of the table, good and bad, in one folder (checked unchanged by each case)."""
    root = tmp_path_factory.mktemp('inputs')
    p = {'root': str(root)}
    data = str(root / 'data')
    make_synthetic_dg_benchmark(data, num_train=2, num_val=1, size=(SIZE, SIZE))
    p['cfg'] = _write_cfg(data, str(root / 'cfg' / 'tiny.py'))
    p['cfg_nodata'] = _write_cfg(str(root / 'nowhere'), str(root / 'cfg_nodata' / 'tiny.py'))
    # a trained run: its checkpoint and work dir (a good run for collect_results)
    run = str(root / 'run')  # in a subprocess: its logger must not outlive it here
    proc = subprocess.run([sys.executable, osp.join(TOOLS, 'train.py'), p['cfg'], '--work-dir',
                           run], env=_env(p), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    p['run'], p['ckpt'] = run, osp.join(run, 'iter_1.pth')
    # checkpoints of another architecture (ViT width 32) and input size (96 px)
    other = _write_cfg(data, str(root / 'cfg_other' / 'other.py'), **{
        'model.backbone.embed_dim': 32, 'model.decode_head.in_channels': 32})
    p['other_arch'] = _model_checkpoint(other, str(root / 'other_arch.pth'), iter=1, epoch=0)
    size96 = _write_cfg(data, str(root / 'cfg_96' / 'size96.py'),
                        **{'model.backbone.img_size': 96})
    p['other_size'] = _model_checkpoint(size96, str(root / 'other_size.pth'), iter=1, epoch=0)
    # broken files
    p['missing'] = str(root / 'no_such_file.pth')
    p['folder'] = str(root / 'a_folder.pth')
    os.makedirs(p['folder'])
    p['empty'] = str(root / 'empty.pth')
    open(p['empty'], 'wb').close()
    p['random'] = str(root / 'random.pth')
    with open(p['random'], 'wb') as fh:
        fh.write(np.random.RandomState(0).bytes(4096))
    with open(p['ckpt'], 'rb') as fh:
        whole = fh.read()
    p['truncated'] = str(root / 'truncated.pth')
    with open(p['truncated'], 'wb') as fh:
        fh.write(whole[:len(whole) // 2])
    p['marker'] = str(root / 'EXPLOIT_RAN')
    p['exploit'] = str(root / 'exploit.pth')
    torch.save({'state_dict': {}, 'meta': Evil(p['marker'])}, p['exploit'])
    p['image'] = _png(root / 'photo.png')
    p['image_as_ckpt'] = str(root / 'photo_as.pth')
    os.rename(_png(root / 'photo_as.png'), p['image_as_ckpt'])
    p['text_as_image'] = str(root / 'notes.png')
    with open(p['text_as_image'], 'w') as fh:
        fh.write('not an image\n')
    p['empty_image'] = str(root / 'empty.png')
    open(p['empty_image'], 'wb').close()
    p['missing_image'] = str(root / 'no_such_image.png')
    p['image_folder'] = str(root / 'folder.png')
    os.makedirs(p['image_folder'])
    p['good_images'] = [_png(root / f'good{i}.png', seed=i) for i in range(2)]
    # configs that are not configs
    p['empty_cfg'] = str(root / 'empty.py')
    open(p['empty_cfg'], 'w').close()
    p['random_cfg'] = str(root / 'garbage.py')
    with open(p['random_cfg'], 'wb') as fh:
        fh.write(np.random.RandomState(1).bytes(2048))
    p['missing_cfg'] = str(root / 'no_such_config.py')
    p['folder_cfg'] = str(root / 'a_folder.py')
    os.makedirs(p['folder_cfg'])
    # checkpoint-tool inputs: a converted tiny DINOv2, its adapter, one of another width
    backbone = converted_backbone()
    p['converted'] = str(root / 'converted.pth')
    save_checkpoint_file(backbone, p['converted'])
    p['converted_other'] = str(root / 'converted_w32.pth')
    save_checkpoint_file(converted_backbone(embed_dim=32, num_heads=2), p['converted_other'])
    p['full_release'] = str(root / 'full_release.pth')
    save_checkpoint_file(release_full_checkpoint(backbone), p['full_release'])
    p['adapter'] = str(root / 'adapter.pth')
    extract_file(p['full_release'], p['adapter'])
    # collect_results: a folder that is no run, a run with a corrupt scalars.json
    p['not_a_run'] = str(root / 'not_a_run')
    os.makedirs(p['not_a_run'])
    p['corrupt_run'] = str(root / 'corrupt_run')
    os.makedirs(osp.join(p['corrupt_run'], '20240101_000000', 'vis_data'))
    with open(osp.join(p['corrupt_run'], '20240101_000000', 'vis_data', 'scalars.json'),
              'w') as fh:
        fh.write('{"fog_mIoU": 1.0, \n')
    # raw dataset layouts, each with a good file and two bad ones
    _dataset_replicas(root, p)
    # a plugin whose model code has a bug (the real-bug cases)
    p['plugins'] = str(root / 'plugins')
    os.makedirs(p['plugins'])
    with open(osp.join(p['plugins'], 'buggy_plugin.py'), 'w') as fh:
        fh.write('from mmseg.models.decode_heads import FCNHead\n'
                 'from mmseg.registry import MODELS\n\n\n'
                 '@MODELS.register_module()\n'
                 'class BuggyHead(FCNHead):\n'
                 '    def __init__(self, **kwargs):\n'
                 "        raise RuntimeError('a bug in the model code')\n")
    p['cfg_buggy'] = _write_cfg(data, str(root / 'cfg_buggy' / 'buggy.py'), **{
        'model.decode_head.type': 'BuggyHead',
        'custom_imports': dict(imports=['soma', 'buggy_plugin'], allow_failed_imports=False)})
    return p


# ------------------------------------------------------------------ running a tool
def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return str(sock.getsockname()[1])


def _env(f):
    return dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, f.get('plugins', REPO)]),
                OMP_NUM_THREADS='1', MPLBACKEND='Agg', PYTHON=sys.executable, PORT=_free_port())


def _load_tool(tool):
    name = '_cli_table_' + tool.replace('/', '_')[:-3]
    spec = importlib.util.spec_from_file_location(name, osp.join(TOOLS, tool))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(tool, args, mode, cwd, f, capfd):
    """``(exit code, stdout, stderr)`` of ``tools/<tool> ARGS`` run in ``cwd``."""
    args = [str(a) for a in args]
    if tool.endswith('.sh') or mode == 'sub':
        cmd = (['bash', osp.join(TOOLS, tool)] if tool.endswith('.sh')
               else [sys.executable, osp.join(TOOLS, tool)])
        proc = subprocess.run(cmd + args, cwd=cwd, env=_env(f), capture_output=True, text=True,
                              timeout=900)
        return proc.returncode, proc.stdout, proc.stderr
    capfd.readouterr()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        code = _load_tool(tool).main(args)
    except SystemExit as e:  # an argument error (soma.utils.cli.ArgumentParser)
        code = e.code
    except BaseException:  # noqa: BLE001  (reported as the case's failure)
        out, err = capfd.readouterr()
        return 'raised', out, err + traceback.format_exc()
    finally:
        os.chdir(previous)
    out, err = capfd.readouterr()
    return code, out, err


def snapshot(*folders, dirs=True):
    """Every path under ``folders`` with its size and modification time (``dirs=False``:
    files only)."""
    seen = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in (dirnames if dirs else []) + filenames:
                path = osp.join(dirpath, name)
                st = os.lstat(path)
                seen[path] = (osp.isdir(path), st.st_size if not osp.isdir(path) else 0,
                              st.st_mtime_ns if not osp.isdir(path) else 0)
    return seen


def error_line(code, out, err):
    """The one ``error:`` line of a failed run (asserting the rest of the contract)."""
    assert code == 1, f'exit code {code}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-5000:]}'
    assert 'Traceback' not in out + err, err[-5000:]
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith('error: ')]
    assert len(errors) == 1, err[-5000:]
    assert lines[-1] == errors[0], err[-5000:]
    return errors[0]


# ------------------------------------------------------------------ the table
# a case: (tool, bad-input class, argv builder (f, out) -> (argv, names in the error line))
CKPT_CLASSES = ('missing', 'folder', 'empty', 'random', 'truncated', 'exploit', 'image_as_ckpt')
CFG_CLASSES = ('missing_cfg', 'folder_cfg', 'empty_cfg', 'random_cfg', 'ckpt_as_cfg')
CFG_OPTIONS = {  # bad-value class: (--cfg-options item, the key the error must name)
    'cfg_wrong_type': ('model.backbone.lora_cfg.r=abc', 'model.backbone.lora_cfg.r'),
    'cfg_out_of_range': ('model.backbone.lora_cfg.r=0', 'model.backbone.lora_cfg.r'),
    'cfg_unknown_key': ('model.backbone.no_such_key=1', 'model.backbone.no_such_key'),
}


def _cfg(f, klass):
    return f['ckpt'] if klass == 'ckpt_as_cfg' else f[klass]


def _cases():
    cases = []

    def add(tool, klass, build, mode='main'):
        cases.append(pytest.param(tool, klass, build, mode, id=f'{tool}-{klass}-{mode}'))

    # ---------------- train.py
    for k in CFG_CLASSES:
        add('train.py', k, lambda f, o, k=k: ([_cfg(f, k), '--work-dir', o / 'w'], [_cfg(f, k)]),
            'sub' if k == 'missing_cfg' else 'main')
    for k, (opt, key) in CFG_OPTIONS.items():
        add('train.py', k, lambda f, o, opt=opt, key=key: (
            [f['cfg'], '--work-dir', o / 'w', '--cfg-options', opt], [key]),
            'sub' if k == 'cfg_wrong_type' else 'main')
    add('train.py', 'cfg_max_iters_abc', lambda f, o: (
        [f['cfg'], '--work-dir', o / 'w', '--cfg-options', 'train_cfg.max_iters=abc'],
        ['train_cfg.max_iters', "'abc'"]))
    add('train.py', 'missing_data_root', lambda f, o: (
        [f['cfg_nodata'], '--work-dir', o / 'w'], ['nowhere']))
    add('train.py', 'iters_0', lambda f, o: ([f['cfg'], '--work-dir', o / 'w', '--iters', 0],
                                             ['iters', '0']))
    for k in CKPT_CLASSES + ('other_arch', 'other_size'):
        add('train.py', f'resume_{k}', lambda f, o, k=k: (
            [f['cfg'], '--work-dir', o / 'w', '--resume', f[k]], [f[k]]))
    add('train.py', 'load_from_truncated', lambda f, o: (
        [f['cfg'], '--work-dir', o / 'w', '--cfg-options', f'load_from={f["truncated"]}'],
        [f['truncated']]))
    # ---------------- test.py
    for k in CFG_CLASSES:
        add('test.py', k, lambda f, o, k=k: (
            [_cfg(f, k), f['ckpt'], '--work-dir', o / 'w'], [_cfg(f, k)]))
    for k in CKPT_CLASSES + ('other_arch', 'other_size'):
        add('test.py', k, lambda f, o, k=k: (
            [f['cfg'], f[k], '--work-dir', o / 'w', '--out', o / 'pred'], [f[k]]),
            'sub' if k == 'truncated' else 'main')
    for k, (opt, key) in CFG_OPTIONS.items():
        add('test.py', k, lambda f, o, opt=opt, key=key: (
            [f['cfg'], f['ckpt'], '--work-dir', o / 'w', '--cfg-options', opt], [key]))
    add('test.py', 'missing_data_root', lambda f, o: (
        [f['cfg_nodata'], f['ckpt'], '--work-dir', o / 'w'], ['nowhere']))
    # ---------------- dist_train.sh / dist_test.sh (torchrun, 2 CPU processes)
    add('dist_train.sh', 'missing_cfg', lambda f, o: (
        [f['missing_cfg'], 2, '--work-dir', o / 'w'], [f['missing_cfg']]))
    add('dist_train.sh', 'cfg_wrong_type', lambda f, o: (
        [f['cfg'], 2, '--work-dir', o / 'w', '--cfg-options', CFG_OPTIONS['cfg_wrong_type'][0]],
        [CFG_OPTIONS['cfg_wrong_type'][1]]))
    add('dist_train.sh', 'nproc_0', lambda f, o: ([f['cfg'], 0, '--work-dir', o / 'w'],
                                                  ['NPROC', '0']))
    add('dist_test.sh', 'other_arch', lambda f, o: (
        [f['cfg'], f['other_arch'], 2, '--work-dir', o / 'w'], [f['other_arch']]))
    add('dist_test.sh', 'nproc_x', lambda f, o: ([f['cfg'], f['ckpt'], 'x'], ['NPROC', "'x'"]))
    # ---------------- visualize.py
    for k in CFG_CLASSES:
        add('visualize.py', k, lambda f, o, k=k: (
            [_cfg(f, k), f['ckpt'], f['good_images'][0], '--save_dir', o / 'vis'], [_cfg(f, k)]))
    for k in CKPT_CLASSES + ('other_arch', ):
        add('visualize.py', k, lambda f, o, k=k: (
            [f['cfg'], f[k], f['good_images'][0], '--save_dir', o / 'vis'], [f[k]]),
            'sub' if k == 'exploit' else 'main')
    for k in ('missing_image', 'image_folder', 'empty_image', 'text_as_image'):
        add('visualize.py', k, lambda f, o, k=k: (
            [f['cfg'], f['ckpt'], f[k], '--save_dir', o / 'vis'], [f[k]]))
    for k, (opt, key) in CFG_OPTIONS.items():
        add('visualize.py', k, lambda f, o, opt=opt, key=key: (
            [f['cfg'], f['ckpt'], f['good_images'][0], '--save_dir', o / 'vis',
             '--cfg-options', opt], [key]))
    # ---------------- benchmark.py
    for k in CFG_CLASSES:
        add('benchmark.py', k, lambda f, o, k=k: (
            [_cfg(f, k), '--out', o / 'b.json', '--repeat', 1, '--warmup', 0], [_cfg(f, k)]))
    for k in CKPT_CLASSES + ('other_arch', ):
        add('benchmark.py', k, lambda f, o, k=k: (
            [f['cfg'], f[k], '--out', o / 'b.json', '--repeat', 1, '--warmup', 0], [f[k]]),
            'sub' if k == 'random' else 'main')
    for k, (opt, key) in CFG_OPTIONS.items():
        add('benchmark.py', k, lambda f, o, opt=opt, key=key: (
            [f['cfg'], '--out', o / 'b.json', '--cfg-options', opt], [key]))
    for k, args, names in (('shape_-1', ['--shape', -1, 64], ['--shape', '-1']),
                           ('batch_0', ['--batch', 0], ['--batch', '0']),
                           ('repeat_0', ['--repeat', 0], ['--repeat', '0'])):
        add('benchmark.py', k, lambda f, o, args=args, names=names: (
            [f['cfg'], '--out', o / 'b.json'] + args, names))
    # ---------------- extract (segmentation and detection)
    for tool in ('extract_soma_weights.py', 'extract_soma_dgod_weights.py'):
        for k in CKPT_CLASSES:
            add(tool, k, lambda f, o, k=k: (
                ['--final_ckpt', f[k], '--soma_ckpt', o / 'adapter.pth'], [f[k]]),
                'sub' if k == 'missing' else 'main')
    # ---------------- merge / generate_full_weights
    for tool in ('merge_soma_weights.py', 'generate_full_weights.py'):
        out_flag = '--merged_ckpt' if tool == 'merge_soma_weights.py' else '--out'
        for k in CKPT_CLASSES + ('other_arch', ):
            bb = 'converted_other' if k == 'other_arch' else k
            add(tool, f'backbone_{k}', lambda f, o, bb=bb, out_flag=out_flag: (
                ['--backbone_ckpt', f[bb], '--soma_ckpt', f['adapter'], out_flag, o / 'm.pth'],
                [f[bb]]), 'sub' if k == 'other_arch' else 'main')
        for k in CKPT_CLASSES:
            add(tool, f'adapter_{k}', lambda f, o, k=k, out_flag=out_flag: (
                ['--backbone_ckpt', f['converted'], '--soma_ckpt', f[k], out_flag, o / 'm.pth'],
                [f[k]]))
    # ---------------- analyze_spectrum.py
    for k in CKPT_CLASSES:
        add('analyze_spectrum.py', f'backbone_{k}', lambda f, o, k=k: (
            [f[k], '--out-dir', o / 'spec'], [f[k]]), 'sub' if k == 'truncated' else 'main')
    for k in ('missing', 'truncated', 'exploit', 'image_as_ckpt'):
        add('analyze_spectrum.py', f'adapter_{k}', lambda f, o, k=k: (
            [f['converted'], '--soma_ckpt', f[k], '--out-dir', o / 'spec'], [f[k]]))
    add('analyze_spectrum.py', 'adapter_other_arch', lambda f, o: (
        [f['converted_other'], '--soma_ckpt', f['adapter'], '--out-dir', o / 'spec'],
        [f['adapter']]))
    for k, args, names in (('r_0', ['--r', 0], ['r', '0']), ('r_-3', ['--r', -3], ['r', '-3'])):
        add('analyze_spectrum.py', k, lambda f, o, args=args, names=names: (
            [f['converted'], '--out-dir', o / 'spec'] + args, names))
    # ---------------- model converters
    for tool in ('convert_models/convert_dinov2_sora.py', 'convert_models/convert_dinov2_soma.py',
                 'convert_models/convert_dinov3.py'):
        for k in CKPT_CLASSES:
            add(tool, k, lambda f, o, k=k: ([f[k], o / 'converted'], [f[k]]),
                'sub' if k == 'random' else 'main')
        add(tool, 'adapter_as_pretrained', lambda f, o: (
            [f['adapter'], o / 'converted'], [f['adapter']]))
    for k, args, names in (('kernel_0', ['--kernel', 0], ['kernel', '0']),
                           ('height_-1', ['--height', -1], ['height', '-1'])):
        add('convert_models/convert_dinov2_sora.py', k, lambda f, o, args=args, names=names: (
            [f['converted'], o / 'c.pth'] + args, names))
    # ---------------- collect_results.py
    for k in ('missing', 'not_a_run', 'corrupt_run', 'ckpt'):
        add('collect_results.py', k, lambda f, o, k=k: ([f[k], '--out', o / 'results'], [f[k]]),
            'sub' if k == 'corrupt_run' else 'main')
    # ---------------- demos
    add('demo.py', 'iters_0', lambda f, o: (['--work-dir', o / 'demo', '--iters', 0],
                                            ['iters', '0']), 'sub')
    add('demo.py', 'work_dir_is_a_file', lambda f, o: (['--work-dir', f['image'], '--iters', 1],
                                                       [f['image']]))
    add('demo_dgod.py', 'iters_0', lambda f, o: (['--work-dir', o / 'demo', '--iters', 0],
                                                 ['iters', '0']), 'sub')
    add('demo_dgod.py', 'missing_cfg', lambda f, o: (
        ['--work-dir', o / 'demo', '--iters', 1, '--config', f['missing_cfg']], [f['missing_cfg']]))
    add('demo_dgod.py', 'work_dir_is_a_file', lambda f, o: (
        ['--work-dir', f['image'], '--iters', 1], [f['image']]))
    # ---------------- dataset converters
    for tool in ('cityscapes.py', 'gta.py', 'mapillary2cityscape.py', 'synthia.py',
                 'urbansyn.py'):
        tool = f'convert_datasets/{tool}'
        add(tool, 'missing_root', lambda f, o: ([f['missing'], '--nproc', 1], [f['missing']]),
            'sub')
        add(tool, 'root_is_a_file', lambda f, o: ([f['image'], '--nproc', 1], [f['image']]))
    add('convert_datasets/mapillary_resize.py', 'missing_root', lambda f, o: (
        [f['missing'], f['root'], o / 'img', o / 'lbl', '--nproc', 1], [f['missing']]), 'sub')
    add('convert_datasets/gta.py', 'nproc_0', lambda f, o: (
        [f['gta_root'], '-o', o / 'gta', '--nproc', 0], ['nproc', '0']))
    # ---------------- deploy: export, the torch-free runner, video
    for k in CKPT_CLASSES + ('other_arch', ):
        add('deploy/export_onnx.py', k, lambda f, o, k=k: (
            [f['cfg'], f[k], '--shape', SIZE, SIZE, '--out', o / 'm.onnx'], [f[k]]),
            'sub' if k == 'exploit' else 'main')
    for k in CFG_CLASSES:
        add('deploy/export_onnx.py', k, lambda f, o, k=k: (
            [_cfg(f, k), f['ckpt'], '--shape', SIZE, SIZE, '--out', o / 'm.onnx'], [_cfg(f, k)]))
    add('deploy/export_onnx.py', 'shape_-1', lambda f, o: (
        [f['cfg'], f['ckpt'], '--shape', -1, SIZE, '--out', o / 'm.onnx'], ['-1']))
    for k in ('missing', 'random', 'image_as_ckpt'):  # as the model file
        add('deploy/onnx_infer.py', f'model_{k}', lambda f, o, k=k: (
            [f[k], f['image'], '--out', o / 'res'], [f[k]]), 'sub')
    for k in ('missing_image', 'text_as_image'):  # as the video
        add('video_demo.py', k, lambda f, o, k=k: (
            [f['cfg'], f['ckpt'], f[k], '--out', o / 'v.mp4'], [f[k]]),
            'sub' if k == 'text_as_image' else 'main')
    add('video_demo.py', 'random_ckpt', lambda f, o: (
        [f['cfg'], f['random'], f['image'], '--out', o / 'v.mp4'], [f['random']]))
    # ---------------- arguments argparse refuses (a value of the wrong type, one missing)
    add('train.py', 'iters_abc', lambda f, o: ([f['cfg'], '--work-dir', o / 'w', '--iters',
                                                'abc'], ['--iters', "'abc'"]), 'sub')
    add('dist_train.sh', 'iters_abc', lambda f, o: (
        [f['cfg'], 2, '--work-dir', o / 'w', '--iters', 'abc'], ['--iters', "'abc'"]))
    add('test.py', 'no_checkpoint', lambda f, o: ([f['cfg']], ['checkpoint']))
    add('visualize.py', 'no_image', lambda f, o: ([f['cfg'], f['ckpt']], ['images']))
    add('benchmark.py', 'shape_one_number', lambda f, o: ([f['cfg'], '--shape', 64],
                                                          ['--shape', '2']))
    add('extract_soma_dgod_weights.py', 'no_output', lambda f, o: (
        ['--final_ckpt', f['ckpt']], ['--soma_ckpt']))
    add('extract_soma_weights.py', 'no_output', lambda f, o: (
        ['--final_ckpt', f['ckpt']], ['--soma_ckpt', '--peft-dir']))
    add('merge_soma_weights.py', 'no_adapter', lambda f, o: (
        ['--backbone_ckpt', f['converted'], '--merged_ckpt', o / 'm.pth'], ['--soma_ckpt']))
    add('generate_full_weights.py', 'no_output', lambda f, o: (
        ['--backbone_ckpt', f['converted'], '--soma_ckpt', f['adapter']], ['--out']))
    add('analyze_spectrum.py', 'r_abc', lambda f, o: (
        [f['converted'], '--r', 'abc', '--out-dir', o / 'spec'], ['--r', "'abc'"]))
    add('convert_models/convert_dinov2_sora.py', 'kernel_abc', lambda f, o: (
        [f['converted'], o / 'c.pth', '--kernel', 'abc'], ['--kernel', "'abc'"]))
    add('convert_models/convert_dinov3.py', 'arch_unknown', lambda f, o: (
        [f['converted'], o / 'c', '--arch', 'vitx99'], ['--arch', "'vitx99'"]))
    add('collect_results.py', 'no_work_dir', lambda f, o: (['--out', o / 'results'],
                                                           ['work_dirs']))
    add('demo.py', 'iters_abc', lambda f, o: (['--work-dir', o / 'demo', '--iters', 'x'],
                                              ['--iters', "'x'"]))
    add('demo_dgod.py', 'size_abc', lambda f, o: (['--work-dir', o / 'demo', '--size', 'x'],
                                                  ['--size', "'x'"]))
    for tool in ('cityscapes.py', 'gta.py', 'mapillary2cityscape.py', 'synthia.py',
                 'urbansyn.py'):
        add(f'convert_datasets/{tool}', 'nproc_abc', lambda f, o: (
            [f['gta_root'], '--nproc', 'x'], ['--nproc', "'x'"]))
    add('convert_datasets/mapillary_resize.py', 'missing_folders', lambda f, o: (
        [f['half_img']], ['label_folder']))
    return cases


@pytest.mark.parametrize('tool,klass,build,mode', _cases())
def test_bad_input_is_one_line(tool, klass, build, mode, f, tmp_path, capfd):
    out = tmp_path / 'out'
    cwd = tmp_path / 'cwd'
    cwd.mkdir()
    args, names = build(f, out)
    dirs = not tool.endswith('.sh')  # see the module docstring
    before = snapshot(tmp_path, f['root'], dirs=dirs)
    code, stdout, stderr = run_tool(tool, args, mode, cwd, f, capfd)
    line = error_line(code, stdout, stderr)
    for name in names:
        assert str(name) in line, line
    assert snapshot(tmp_path, f['root'], dirs=dirs) == before, line
    assert not osp.exists(f['marker'])


# ------------------------------------------------------------------ several inputs
# (tool, argv builder (f, out) -> (argv, the bad inputs, the outputs of the good ones))
def _converter(name, root_key, bad_key, good_output):
    return pytest.param(
        f'convert_datasets/{name}', lambda f, o: (
            [f[root_key], '-o', o / 'data', '--nproc', 1], f[bad_key],
            [o / 'data' / good_output]), id=name)


MIXED = [
    pytest.param('visualize.py', lambda f, o: (
        [f['cfg'], f['ckpt'], f['good_images'][0], f['missing_image'], f['text_as_image'],
         f['good_images'][1], f['empty_image'], '--save_dir', o / 'vis'],
        [f['missing_image'], f['text_as_image'], f['empty_image']],
        [o / 'vis' / 'good0.png', o / 'vis' / 'good1.png']), id='visualize'),
    pytest.param('collect_results.py', lambda f, o: (
        [f['missing'], f['run'], f['not_a_run'], f['corrupt_run'], '--out', o / 'results'],
        [f['missing'], f['not_a_run'], f['corrupt_run']],
        [o / 'results.md', o / 'results.csv', o / 'results.png']), id='collect_results'),
    _converter('gta.py', 'gta_root', 'bad_gta', 'labels/00001_labelTrainIds.png'),
    _converter('synthia.py', 'synthia_root', 'bad_synthia',
               'GT/LABELS/0000001_labelTrainIds.png'),
    _converter('urbansyn.py', 'urbansyn_root', 'bad_urbansyn', 'ss/rgb_0001.png'),
    _converter('cityscapes.py', 'cityscapes_root', 'bad_cityscapes',
               'gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png'),
    pytest.param('convert_datasets/mapillary2cityscape.py', lambda f, o: (
        [f['mapillary_root'], o / 'data', '--nproc', 1], f['bad_mapillary'],
        [o / 'data' / 'train' / 'label' / 'a.png', o / 'data' / 'val' / 'label' / 'b.png']),
        id='mapillary2cityscape'),
    pytest.param('convert_datasets/mapillary_resize.py', lambda f, o: (
        [f['half_img'], f['half_lbl'], o / 'img', o / 'lbl', '--nproc', 1], f['bad_half'],
        [o / 'img' / 'a.jpg', o / 'lbl' / 'a.png']), id='mapillary_resize'),
]


@pytest.mark.parametrize('tool,build', MIXED)
def test_good_inputs_done_bad_ones_named_at_the_end(tool, build, f, tmp_path, capfd):
    out = tmp_path / 'out'
    cwd = tmp_path / 'cwd'
    cwd.mkdir()
    args, bad, good_outputs = build(f, out)
    before = snapshot(f['root'])
    code, stdout, stderr = run_tool(tool, args, 'main', cwd, f, capfd)
    line = error_line(code, stdout, stderr)
    for name in bad:
        assert str(name) in line, line
    for path in good_outputs:
        assert osp.isfile(path), (path, line)
    assert snapshot(f['root']) == before


def test_several_inputs_as_a_user_runs_them(f, tmp_path):
    """The same contract through the real command line (one tool of the kind)."""
    args, bad, good_outputs = MIXED[0].values[1](f, tmp_path / 'out')
    code, stdout, stderr = run_tool('visualize.py', args, 'sub', tmp_path, f, None)
    line = error_line(code, stdout, stderr)
    assert all(str(name) in line for name in bad) and all(map(osp.isfile, good_outputs))


# ------------------------------------------------------------------ real bugs
@pytest.mark.parametrize('tool,build,mode', [
    pytest.param('train.py', lambda f, o: [f['cfg_buggy'], '--work-dir', o / 'w'], 'sub',
                 id='train'),
    pytest.param('test.py', lambda f, o: [f['cfg_buggy'], f['ckpt'], '--work-dir', o / 'w'],
                 'sub', id='test'),
    pytest.param('visualize.py', lambda f, o: [f['cfg_buggy'], f['ckpt'], f['good_images'][0],
                                               '--save_dir', o / 'vis'], 'main', id='visualize'),
    pytest.param('benchmark.py', lambda f, o: [f['cfg_buggy'], '--out', o / 'b.json'], 'main',
                 id='benchmark'),
    pytest.param('dist_train.sh', lambda f, o: [f['cfg_buggy'], 2, '--work-dir', o / 'w'],
                 'sub', id='dist_train'),
])
def test_a_bug_keeps_its_traceback(tool, build, mode, f, tmp_path, capfd, monkeypatch):
    monkeypatch.syspath_prepend(f['plugins'])  # the buggy model's module, for in-process runs
    code, stdout, stderr = run_tool(tool, build(f, tmp_path / 'out'), mode, tmp_path, f, capfd)
    assert code != 0
    assert 'Traceback' in stderr and 'RuntimeError: a bug in the model code' in stderr
    assert not any(line.startswith('error: ') for line in stderr.splitlines())


def test_only_user_errors_become_one_line():
    """run_cli's exception set, against a list written here: bugs are never among them."""
    bugs = (RuntimeError, AssertionError, AttributeError, IndexError, ZeroDivisionError,
            NameError, NotImplementedError, RecursionError, MemoryError)
    assert not any(issubclass(bug, USER_ERRORS) for bug in bugs)
    assert {e.__name__ for e in USER_ERRORS} == {
        'OSError', 'ValueError', 'KeyError', 'TypeError', 'ImportError', 'SyntaxError',
        'ConfigParsingError'}
    with pytest.raises(RuntimeError, match='a bug'):
        run_cli(_bug)
    with pytest.raises(RuntimeError, match='a bug'):  # a converter task: not a bad file
        run_tasks(_bug, [('x', 'y', 'z')], nproc=1)


def _bug(*args):
    raise RuntimeError('a bug')


def _tool_files():
    tools = [osp.join(dirpath, name) for dirpath, _, names in os.walk(TOOLS)
             for name in names if name.endswith('.py')]
    return sorted(osp.relpath(t, TOOLS) for t in tools)


# tools whose main is not run_cli's, and why
NOT_RUN_CLI = {
    'torchrun.py': 'the launcher: the processes it starts run the tools',
    'deploy/onnx_infer.py': 'the torch-free runner: soma.utils.cli imports mmengine',
}


@pytest.mark.parametrize('tool', _tool_files())
def test_every_tool_reports_through_run_cli(tool):
    """No tool catches exceptions by hand; each one's main is run_cli's (or a soma.apis main,
    itself run_cli's), but for NOT_RUN_CLI."""
    with open(osp.join(TOOLS, tool)) as fh:
        tree = ast.parse(fh.read())
    assert not any(isinstance(node, ast.Try) for node in ast.walk(tree)), tool
    if tool in NOT_RUN_CLI:
        return
    code = _load_tool(tool).main.__code__
    with open(code.co_filename) as fh:
        main = next(n for n in ast.walk(ast.parse(fh.read())) if isinstance(n, ast.FunctionDef)
                    and n.name == 'main' and n.lineno == code.co_firstlineno)
    assert 'run_cli(' in ast.unparse(main), (tool, code.co_filename)
