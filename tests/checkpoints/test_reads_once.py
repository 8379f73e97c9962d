"""Each tool call reads each input file once: extract (adapter file and peft folder from one
read of the trained checkpoint), merge (with and without the peft folder) and
generate_full_weights; an HF backbone folder's ``config.json`` is read once too
(tests/checkpoints/test_hf_checkpoint_tools.py). The count is Python's own record of opened
files (``sys.audit``'s ``open`` event), taken in a fresh interpreter running the real tool."""
import os.path as osp
import sys

import pytest

import soma  # noqa: F401
from soma.checkpoints import extract_file, extract_peft_dir
from soma.utils.checkpoint_io import save_checkpoint_file

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(__file__)), 'tools'))  # shared helpers
from _ckpt_fixtures import converted_backbone, release_full_checkpoint  # noqa: E402
from _tool_runner import tool_opens  # noqa: E402


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp('reads_once')
    backbone = converted_backbone(seed=0)
    full = release_full_checkpoint(backbone, r=4, start=2)
    full['meta']['soma'] = dict(semantics='residual', lora_cfg=dict(
        type='sora', r=4, lora_alpha=4, target_modules=['q', 'k', 'v', 'proj', 'fc1', 'fc2'],
        start_lora_idx=2))
    save_checkpoint_file(backbone, root / 'converted.pth')
    save_checkpoint_file(full, root / 'full.pth')
    extract_file(full, root / 'adapter.pth')
    extract_peft_dir(full, backbone, root / 'peft')
    return root


def test_extract_reads_the_trained_checkpoint_once(files):
    counts = tool_opens('extract_soma_weights.py', [files / 'full.pth', files / 'converted.pth'],
                        '--final_ckpt', files / 'full.pth', '--soma_ckpt', files / 'out.pth',
                        '--peft-dir', files / 'out_peft', '--backbone', files / 'converted.pth')
    assert counts == {'full.pth': 1, 'converted.pth': 1}
    assert osp.isfile(files / 'out.pth') and osp.isdir(files / 'out_peft')


@pytest.mark.parametrize('peft_dir', [False, True])
def test_merge_reads_backbone_and_adapter_once(files, peft_dir):
    extra = ['--peft-dir', files / 'peft'] if peft_dir else []
    counts = tool_opens('merge_soma_weights.py', [files / 'converted.pth', files / 'adapter.pth'],
                        '--backbone_ckpt', files / 'converted.pth', '--soma_ckpt',
                        files / 'adapter.pth', '--merged_ckpt', files / f'merged{peft_dir}.pth',
                        *extra)
    assert counts == {'converted.pth': 1, 'adapter.pth': 1}


def test_generate_full_weights_reads_each_input_once(files):
    counts = tool_opens('generate_full_weights.py',
                        [files / 'converted.pth', files / 'adapter.pth'],
                        '--backbone_ckpt', files / 'converted.pth', '--soma_ckpt',
                        files / 'adapter.pth', '--out', files / 'folded.pth', '--merge-adapters')
    assert counts == {'converted.pth': 1, 'adapter.pth': 1}
