"""Atomic checkpoint writes: a write that fails after its temporary file is complete leaves
nothing behind (the folder listing is what it was) and an existing target intact."""
import os
import sys

import pytest
import torch

import soma  # noqa: F401
from soma.utils.checkpoint_io import load_checkpoint_file, save_checkpoint_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'tools'))
from _ckpt_fixtures import converted_backbone, release_full_checkpoint  # noqa: E402

ONE_THREAD = True


def _listing(folder):
    return sorted(os.listdir(folder))


def _checkpoint(seed):
    g = torch.Generator().manual_seed(seed)
    return {'state_dict': {'w': torch.randn(128, 128, generator=g)}, 'meta': {'seed': seed}}


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
@pytest.mark.parametrize('existing', [False, True])
def test_a_failed_rename_leaves_the_folder_as_it_was(tmp_path, monkeypatch, suffix, existing):
    target = tmp_path / f'out{suffix}'
    if existing:
        save_checkpoint_file(_checkpoint(0), target)
    before, old_bytes = _listing(tmp_path), target.read_bytes() if existing else None
    seen = []

    def failing_replace(src, dst):
        seen.append(os.path.getsize(src))  # the temporary is complete when the rename fails
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(os, 'replace', failing_replace)
    with pytest.raises(OSError, match='disk full: writing .*out'):  # one line that says so
        save_checkpoint_file(_checkpoint(1), target)
    monkeypatch.undo()
    assert seen and seen[0] > 128 * 128 * 4  # the full-size temporary existed
    assert _listing(tmp_path) == before
    if existing:
        assert target.read_bytes() == old_bytes
        assert load_checkpoint_file(target)['meta']['seed'] == 0


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_a_failed_write_leaves_the_folder_as_it_was(tmp_path, monkeypatch, suffix):
    target = tmp_path / f'out{suffix}'
    before = _listing(tmp_path)
    bad = _checkpoint(2)
    bad['meta']['unsaveable'] = (lambda: None) if suffix == '.pth' else {1, 2}  # no pickle/json
    with pytest.raises(Exception):
        save_checkpoint_file(bad, target)
    assert _listing(tmp_path) == before


# ------------------------------------------------------------------ folders (peft export)
def _peft_export(tmp_path):
    backbone = converted_backbone(seed=0)
    return backbone, release_full_checkpoint(backbone, r=4, start=2, ema=False)


def test_a_failed_folder_export_leaves_the_earlier_one(tmp_path, monkeypatch):
    from peft import LoraConfig

    from soma.checkpoints import extract_peft_dir
    backbone, full = _peft_export(tmp_path)
    out = tmp_path / 'peft'
    extract_peft_dir(full, backbone, out)
    before = {p: (out / p).read_bytes() for p in sorted(os.listdir(out))}
    assert set(before) == {'adapter_config.json', 'adapter_model.safetensors'}
    parent = _listing(tmp_path)

    def failing_config_write(*args, **kwargs):  # the weights are written, the config fails
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(LoraConfig, 'save_pretrained', failing_config_write)
    full['state_dict']['backbone.model.blocks.3.mlp.fc2.lora_B.weight'] += 1.0
    with pytest.raises(OSError, match='disk full: writing .*peft'):
        extract_peft_dir(full, backbone, out)
    monkeypatch.undo()
    assert _listing(tmp_path) == parent  # no temporary folder left beside it
    assert {p: (out / p).read_bytes() for p in sorted(os.listdir(out))} == before
    # a later export replaces the earlier one as a whole
    extract_peft_dir(full, backbone, out)
    assert (out / 'adapter_model.safetensors').read_bytes() != before[
        'adapter_model.safetensors']


def test_a_folder_with_other_files_is_not_overwritten(tmp_path):
    from soma.checkpoints import extract_peft_dir
    backbone, full = _peft_export(tmp_path)
    out = tmp_path / 'mine'
    out.mkdir()
    (out / 'notes.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match='not an empty folder'):
        extract_peft_dir(full, backbone, out)
    assert os.listdir(out) == ['notes.txt']



# ------------------------------------------------------------------ a full disk, through the tools
@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_merge_onto_a_full_disk_is_one_line_and_writes_nothing(tmp_path, small_filesystem,
                                                               suffix):
    from _tool_runner import tool_subprocess

    from soma.checkpoints import extract_file
    backbone, full = _peft_export(tmp_path)
    save_checkpoint_file(backbone, tmp_path / 'converted.pth')
    extract_file(full, tmp_path / 'adapter.pth')
    small = small_filesystem(64 * 1024)  # the merged checkpoint needs ~1 MB
    res = tool_subprocess('merge_soma_weights.py', '--backbone_ckpt', tmp_path / 'converted.pth',
                          '--soma_ckpt', tmp_path / 'adapter.pth', '--merged_ckpt',
                          small / f'merged{suffix}')
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: disk full: writing '), res.stderr
    assert str(small) in lines[0] and 'free' in lines[0]
    assert os.listdir(small) == []
