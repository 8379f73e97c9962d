"""Atomic checkpoint writes: a write that fails after its temporary file is complete leaves
nothing behind (the folder listing is what it was) and an existing target intact."""
import os

import pytest
import torch

import soma  # noqa: F401
from soma.utils.checkpoint_io import load_checkpoint_file, save_checkpoint_file

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
    with pytest.raises(OSError, match='No space left'):
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
