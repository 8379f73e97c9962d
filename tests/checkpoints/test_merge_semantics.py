"""The semantics tag of merged / folded checkpoints: what the adapter recorded, through the
functions and through the files the tools write (the round-trip tests compare weights)."""
import os.path as osp
import sys

import pytest
import torch

import soma  # noqa: F401
from soma import checkpoints as ck
from soma.utils.checkpoint_io import load_checkpoint_file, save_checkpoint_file

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(__file__)), 'tools'))  # shared helpers
from _ckpt_fixtures import converted_backbone, release_full_checkpoint  # noqa: E402

ONE_THREAD = True


@pytest.fixture(scope='module')
def backbone():
    return converted_backbone(seed=0)


def _residual_full(backbone):
    """A full checkpoint recorded as 'residual' (this project's), with its adapter config."""
    full = release_full_checkpoint(backbone, r=4, start=2, ema=False)
    full['meta']['soma'] = dict(semantics='residual', lora_cfg=dict(
        type='sora', r=4, lora_alpha=4, target_modules=['q', 'k', 'v', 'proj', 'fc1', 'fc2'],
        start_lora_idx=2))
    return full


@pytest.mark.parametrize('recorded', ['residual', 'release', None])
def test_merge_and_fold_keep_the_recorded_semantics(backbone, tmp_path, recorded):
    full = (_residual_full(backbone) if recorded == 'residual'
            else release_full_checkpoint(backbone, r=4, start=2, ema=False))
    if recorded == 'release':
        full['meta']['soma'] = dict(semantics='release')
    expected = recorded or 'release'  # no record: a released checkpoint
    adapter = ck.extract_soma_weights(full)
    assert ck.checkpoint_semantics(adapter) == expected
    assert adapter['meta'].get('soma', {}).get('semantics') == recorded  # copied as recorded
    merged = ck.merge_soma_weights(backbone, adapter)
    assert merged['meta']['soma']['semantics'] == expected
    assert ck.fold_adapters(merged)['meta']['soma']['semantics'] == expected
    # and through the files the tools write
    save_checkpoint_file(backbone, tmp_path / 'converted.pth')
    save_checkpoint_file(adapter, tmp_path / 'adapter.pth')
    ck.merge_file(tmp_path / 'converted.pth', tmp_path / 'adapter.pth', tmp_path / 'merged.pth')
    assert load_checkpoint_file(tmp_path / 'merged.pth')['meta']['soma']['semantics'] == expected
    ck.merge_file(tmp_path / 'converted.pth', tmp_path / 'adapter.pth', tmp_path / 'folded.pth',
                  merge_adapters=True)
    folded = load_checkpoint_file(tmp_path / 'folded.pth')['meta']['soma']
    assert folded['semantics'] == expected and folded['folded'] is True


def test_a_semantics_override_is_what_the_merge_records(backbone):
    adapter = ck.extract_soma_weights(_residual_full(backbone), semantics='release')
    assert ck.merge_soma_weights(backbone, adapter)['meta']['soma']['semantics'] == 'release'
    # a residual merge rebuilds W_res: the adapted weights differ from W_pretrained
    residual = ck.merge_soma_weights(backbone, ck.extract_soma_weights(_residual_full(backbone)))
    key = 'blocks.2.attn.q.weight'
    assert not torch.equal(residual['state_dict']['backbone.model.' + key], backbone[key])
