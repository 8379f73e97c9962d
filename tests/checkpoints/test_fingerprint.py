"""Checkpoints know their backbone: extract records a fingerprint of the backbone the adapters
were trained on; merge, ``tools/test.py --backbone`` and ``LoadBackboneHook`` refuse another
one in one line (``--ignore-fingerprint`` overrides); a released adapter records none and is
not checked. The merge tool also takes a whole model checkpoint as the backbone source, and
the demo writes its backbone so that the README's extract / merge / spectrum commands run on
its output."""
import copy
import os
import os.path as osp
import sys

import pytest
import torch

import soma  # noqa: F401
from soma import checkpoints as ck
from soma.checkpoints.fingerprint import FINGERPRINT_KEY, backbone_fingerprint
from soma.utils.checkpoint_io import CheckpointError, load_checkpoint_file, save_checkpoint_file

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(__file__)), 'tools'))  # shared helpers
from _ckpt_fixtures import converted_backbone, release_full_checkpoint  # noqa: E402
from _tool_runner import tool_subprocess  # noqa: E402

ONE_THREAD = True
LORA_CFG = dict(type='sora', r=4, lora_alpha=4, target_modules=['q', 'k', 'v', 'proj', 'fc1',
                                                                   'fc2'], start_lora_idx=2)


def _residual_full(backbone):
    full = release_full_checkpoint(backbone, r=4, start=2, ema=False)
    full['meta']['soma'] = dict(semantics='residual', lora_cfg=dict(LORA_CFG))
    return full


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp('fingerprint')
    mine, other = converted_backbone(seed=0), converted_backbone(seed=1)  # same shapes
    save_checkpoint_file(mine, root / 'mine.pth')
    save_checkpoint_file(other, root / 'other.pth')
    save_checkpoint_file(_residual_full(mine), root / 'full.pth')
    ck.extract_file(root / 'full.pth', root / 'adapter.pth')
    return root


def test_the_fingerprint_covers_only_what_training_never_changes():
    backbone = converted_backbone(seed=0)
    reference = backbone_fingerprint(backbone)
    trained = dict(backbone)
    for key in ('blocks.3.attn.q.weight', 'blocks.3.attn.q.bias', 'mask_token'):
        trained[key] = trained[key] + 1.0  # what SoMA / peft train: no change
    assert backbone_fingerprint(trained) == reference
    bf16 = {k: v.to(torch.bfloat16) for k, v in backbone.items()}  # a bf16 run of it
    assert backbone_fingerprint(bf16) == reference
    resized = dict(backbone, pos_embed=torch.randn(1, 17, 64))  # converted for another size
    assert backbone_fingerprint(resized) == reference
    for key in ('patch_embed.proj.weight', 'blocks.0.norm1.weight', 'blocks.2.ls1.gamma'):
        moved = dict(backbone)
        moved[key] = moved[key] * 1.5  # another backbone: a frozen tensor differs
        assert backbone_fingerprint(moved) != reference, key


def test_extract_records_the_fingerprint_and_merge_checks_it(files):
    adapter = load_checkpoint_file(files / 'adapter.pth')
    assert adapter['meta']['soma'][FINGERPRINT_KEY] == backbone_fingerprint(
        load_checkpoint_file(files / 'mine.pth'))
    merged = ck.merge_soma_weights(files / 'mine.pth', files / 'adapter.pth')
    full = load_checkpoint_file(files / 'full.pth')['state_dict']
    assert torch.equal(merged['state_dict']['backbone.model.blocks.0.attn.q.weight'],
                       full['backbone.model.blocks.0.attn.q.weight'])
    with pytest.raises(CheckpointError) as err:
        ck.merge_soma_weights(files / 'other.pth', files / 'adapter.pth')
    msg = str(err.value)
    assert '\n' not in msg and 'adapter.pth was trained on another backbone than' in msg
    assert 'other.pth' in msg and '--ignore-fingerprint' in msg
    forced = ck.merge_soma_weights(files / 'other.pth', files / 'adapter.pth',
                                   check_fingerprint=False)
    other = load_checkpoint_file(files / 'other.pth')
    assert torch.equal(forced['state_dict']['backbone.model.blocks.0.attn.q.weight'],
                       other['blocks.0.attn.q.weight'])


def test_merge_tool_refuses_another_backbone_in_one_line(files, tmp_path):
    out = tmp_path / 'merged.pth'
    res = tool_subprocess('merge_soma_weights.py', '--backbone_ckpt', files / 'other.pth',
                          '--soma_ckpt', files / 'adapter.pth', '--merged_ckpt', out)
    assert res.returncode == 1 and not out.exists()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'another backbone' in lines[0]
    res = tool_subprocess('merge_soma_weights.py', '--backbone_ckpt', files / 'other.pth',
                          '--soma_ckpt', files / 'adapter.pth', '--merged_ckpt', out,
                          '--ignore-fingerprint')
    assert res.returncode == 0 and out.exists(), res.stderr[-2000:]


def test_a_released_adapter_records_none_and_merges_with_any_backbone(files):
    released = release_full_checkpoint(converted_backbone(seed=0), r=4, start=2, ema=False)
    adapter = ck.extract_soma_weights(released)
    adapter['meta'].get('soma', {}).pop(FINGERPRINT_KEY, None)  # the release records none
    adapter = {k: v for k, v in adapter.items() if k != 'meta'}
    merged = ck.merge_soma_weights(files / 'other.pth', adapter)
    assert merged['meta']['soma']['semantics'] == 'release'


def test_a_whole_model_checkpoint_as_the_backbone_source(files):
    mine = load_checkpoint_file(files / 'mine.pth')
    released = release_full_checkpoint(mine, r=4, start=2, ema=False)  # weights = W_pre
    released['meta']['soma'] = dict(semantics='release')
    adapter = ck.extract_soma_weights(released)
    by_converted = ck.merge_soma_weights(mine, adapter)['state_dict']
    by_model = ck.merge_soma_weights(released, adapter)['state_dict']
    assert set(by_model) == set(by_converted)
    assert all(torch.equal(by_model[k], by_converted[k]) for k in by_converted)
    # a 'residual' model holds W_res where the backbone had W: it cannot stand for it
    with pytest.raises(CheckpointError, match='residuals W - s\\*B0@A0, not the backbone'):
        ck.merge_soma_weights(files / 'full.pth', files / 'adapter.pth')


def test_test_tool_and_hook_refuse_another_backbone(files, tmp_path):
    from mmengine.config import Config
    from mmengine.runner import Runner

    from soma.apis.demo import demo_config
    from soma.datasets import make_synthetic_dg_benchmark
    from conftest import TINY_FCN_HEAD
    make_synthetic_dg_benchmark(tmp_path / 'data', num_train=2, num_val=1, size=(64, 64))
    cfg = demo_config(tmp_path / 'data', tmp_path / 'work', 1, val=False, image_size=64)
    cfg.model.backbone.lora_cfg = dict(LORA_CFG)
    cfg.model.decode_head = copy.deepcopy(TINY_FCN_HEAD)
    config = str(tmp_path / 'cfg.py')
    cfg.dump(config)
    res = tool_subprocess('test.py', config, files / 'adapter.pth', '--backbone',
                          files / 'other.pth', '--work-dir', tmp_path / 'test')
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith('error: ') and \
        'another backbone' in res.stderr.strip().splitlines()[-1]
    cfg = Config.fromfile(config)
    cfg.custom_hooks = [dict(type='LoadBackboneHook', checkpoint_path=str(files / 'other.pth'))]
    cfg.load_from = str(files / 'adapter.pth')
    with pytest.raises(CheckpointError, match='another backbone'):
        Runner.from_cfg(cfg).train()


def test_the_demo_writes_its_backbone_for_the_checkpoint_tools(tmp_path):
    from soma.apis.demo import run_demo
    result = run_demo(str(tmp_path / 'demo'), max_iters=2, num_train=4, num_val=2,
                      image_size=64)
    backbone, trained = result['paths']['backbone'], result['paths']['checkpoint']
    assert osp.isfile(backbone)
    adapter, merged = tmp_path / 'adapter.pth', tmp_path / 'merged.pth'
    for tool, *args in (
            ('extract_soma_weights.py', '--final_ckpt', trained, '--soma_ckpt', adapter),
            ('merge_soma_weights.py', '--backbone_ckpt', backbone, '--soma_ckpt', adapter,
             '--merged_ckpt', merged),
            ('analyze_spectrum.py', backbone, '--soma_ckpt', adapter, '--r', 4, '--out-dir',
             tmp_path / 'spectrum')):
        res = tool_subprocess(tool, *args)
        assert res.returncode == 0, (tool, res.stderr[-2000:])
    # extract then merge rebuilds the trained model exactly
    want = load_checkpoint_file(trained)['state_dict']
    got = load_checkpoint_file(merged)['state_dict']
    assert set(got) == set(want)
    different = [k for k in want if not torch.equal(got[k], want[k])]
    assert not different, different[:3]
    assert sorted(os.listdir(tmp_path / 'spectrum'))[:2] == ['minor_energy.png', 'spectrum.png']
