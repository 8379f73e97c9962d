"""Every ```python block of README.md runs, so the documentation and the code cannot drift.

Stand-ins: a block may name real files (a released config, the converted ViT-L, an adapter
checkpoint, an image). ``STAND_INS`` maps each such path, exactly as the README spells it, to
a tiny file this test builds in a tmp dir (the 4-block ViT of tests/tools/tiny_seg_config.py,
a converted backbone for it, an adapter + head checkpoint of it, a 64-px image); every string
literal of a block equal to a key (quoted with ' or ") is replaced by the stand-in's path
before the block runs. Names a block leaves to the reader (``pretrained_vit``) come from
``PROVIDED``. A block naming any other file fails on the missing file: add a stand-in here
when the README starts naming a new one. Blocks run one by one, each in a fresh namespace,
with the current directory a tmp dir (nothing is written into the repository).
"""
import os
import os.path as osp
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
README = osp.join(REPO, 'README.md')
TINY_CONFIG = osp.join(REPO, 'tests', 'tools', 'tiny_seg_config.py')
IMAGE_HW = (48, 64)

# path as written in README.md -> stand-in (a key of the `stand_ins` fixture)
STAND_INS = {
    'configs/soma/soma_dinov2-L_mask2former.py': 'config',
    'checkpoints/soma_checkpoints/soma_dinov2-L_g2cbm_best.pth': 'adapter',
    'checkpoints/dinov2_sora_converted.pth': 'converted',
    'demo.png': 'image',
}


def _tiny_vit():
    """A 10-block ViT (the README adapts from block 8 on)."""
    from soma.models.backbones.dinov2 import DinoVisionTransformer
    torch.manual_seed(0)
    return DinoVisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=10,
                                 num_heads=2, out_indices=[2, 5, 7, 9])


PROVIDED = {'pretrained_vit': _tiny_vit}


def python_blocks(text):
    """``(first line number, source)`` of every ```python block of ``text``."""
    return [(text.count('\n', 0, m.start(1)) + 1, m.group(1))
            for m in re.finditer(r'^```python[ \t]*\n(.*?)^```', text, re.M | re.S)]


with open(README, encoding='utf-8') as _f:
    BLOCKS = python_blocks(_f.read())


def substitute(source, paths):
    for real, stand_in in paths.items():
        for quote in ("'", '"'):
            source = source.replace(f'{quote}{real}{quote}', repr(stand_in))
    return source


@pytest.fixture(scope='module')
def stand_ins(tmp_path_factory):
    """The tiny files the README's real paths are replaced with."""
    import cv2

    import soma  # noqa: F401
    from soma.apis import extract_file, init_model
    from soma.utils.checkpoint_io import save_checkpoint_file
    sys.path.insert(0, osp.join(REPO, 'tests', 'tools'))
    from _ckpt_fixtures import converted_backbone
    root = tmp_path_factory.mktemp('readme')
    converted = str(root / 'converted.pth')
    save_checkpoint_file(converted_backbone(seed=3), converted)
    model = init_model(TINY_CONFIG, backbone=converted)  # SVD of the converted weights
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a "trained" model: adapters and head moved
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    adapter = str(root / 'adapter.pth')
    extract_file({'state_dict': model.state_dict(),
                  'meta': {'soma': model.backbone.checkpoint_meta()}}, adapter)
    image = str(root / 'image.png')
    cv2.imwrite(image, np.random.RandomState(0).randint(0, 255, IMAGE_HW + (3, ), np.uint8))
    return dict(config=TINY_CONFIG, converted=converted, adapter=adapter, image=image)


def test_readme_has_python_blocks_and_named_repo_files_exist():
    assert BLOCKS, 'README.md has no ```python block'
    sources = '\n'.join(source for _, source in BLOCKS)
    assert 'init_model' in sources and 'inference_model' in sources
    for real in STAND_INS:  # a config the README names must exist (the stand-in is tiny)
        if real.startswith('configs/'):
            assert osp.isfile(osp.join(REPO, real)), real


@pytest.mark.parametrize('line, source', BLOCKS, ids=[f'line{n}' for n, _ in BLOCKS])
def test_readme_python_block_runs(line, source, stand_ins, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = {real: stand_ins[key] for real, key in STAND_INS.items()}
    namespace = {name: make() for name, make in PROVIDED.items()
                 if re.search(rf'\b{name}\b', source)}
    namespace['__name__'] = '__readme__'
    code = compile(substitute(source, paths), f'README.md (block at line {line})', 'exec')
    exec(code, namespace)
    if 'label_map' in namespace:  # the inference example: a label per pixel of the image
        label_map = namespace['label_map']
        assert tuple(label_map.shape) == IMAGE_HW
        assert 0 <= int(label_map.min()) and int(label_map.max()) < 19


def test_soma_apis_exports_resolve_to_the_submodule_functions():
    import importlib

    import soma.apis as apis
    for name in apis.__all__:
        module, attr = apis._EXPORTS[name]
        module = module if '.' in module else f'soma.apis.{module}'  # soma.checkpoints ...
        assert getattr(apis, name) is getattr(importlib.import_module(module), attr), name
    # the submodules keep their names next to the exported entry points
    assert apis.test.__name__ == 'soma.apis.test' and apis.run_test is apis.test.test
    assert apis.train.__name__ == 'soma.apis.train' and apis.run_train is apis.train.train
    with pytest.raises(AttributeError, match='no_such_name'):
        apis.no_such_name  # noqa: B018


def test_import_soma_apis_imports_no_submodule():
    code = ('import sys, soma.apis; '
            'print([m for m in sys.modules if m.startswith("soma.apis.")])')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == '[]'
