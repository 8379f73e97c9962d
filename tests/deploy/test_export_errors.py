"""tools/deploy/export_onnx.py on bad input: one ``error:`` line naming the file, setting or
module, exit code 1, no file written."""
import os
import os.path as osp
import sys

import pytest
import torch

from soma.apis.inference import init_model
from soma.datasets import make_synthetic_dg_benchmark
from soma.deploy.export import export_graph
from soma.deploy.graphs import ExportError, SegmentorGraph, merged_for_export

sys.path.insert(0, osp.dirname(__file__))
from _deploy_fixtures import (SOMA, adapter_only, fcn_head, hf_folder, tool_main,  # noqa: E402
                              trained_checkpoint, write_config)

ONE_THREAD = True  # see tests/conftest.py


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A tiny transformers DINOv2 with registers + SoMA + FCN, full and adapter-only."""
    root = tmp_path_factory.mktemp('export_errors')
    make_synthetic_dg_benchmark(root / 'data', num_train=2, num_val=1, size=(64, 64))
    folder = hf_folder(root / 'hf', 'dinov2_with_registers')
    backbone = dict(type='HFVisionBackbone', model=folder, out_indices=[0, 1, 2, 3], **SOMA)
    config = write_config(str(root / 'data'), str(root / 'train'), backbone, fcn_head(32))
    full, _ = trained_checkpoint(config, str(root / 'train'))
    adapter = adapter_only(full, str(root / 'adapter.pth'))
    return dict(root=root, config=config, full=full, adapter=adapter, folder=folder)


def _error_line(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith('error: '), lines
    return lines[-1]


def test_cli_errors(trained, tmp_path, capsys):
    out = tmp_path / 'model.onnx'
    base = ['--shape', 64, 64, '--out', out]
    cases = [
        ([tmp_path / 'missing.py', trained['full']] + base, 'config not found'),
        ([trained['config'], tmp_path / 'missing.pth'] + base, 'missing.pth'),
        ([trained['config'], trained['adapter']] + base, '--backbone'),
        ([trained['config'], trained['full'], '--opset', 15] + base, 'at least 16'),
        ([trained['config'], trained['full'], '--shape', 64, 64, '--out', tmp_path],
         'is a folder'),
        # a module that raises while traced: named, with its own message
        ([trained['config'], trained['full'], '--shape', 60, 64, '--out', out],
         'cannot export backbone (HFVisionBackbone): ValueError: HFVisionBackbone: input '
         '60x64 is not a multiple of the patch size 16'),
    ]
    for args, message in cases:
        assert tool_main('deploy/export_onnx.py', *args) == 1, args
        assert message in _error_line(capsys), (args, message)
        assert not out.exists() and not [n for n in os.listdir(tmp_path) if n.endswith('.tmp')]
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(open(trained['full'], 'rb').read()[:5000])
    assert tool_main('deploy/export_onnx.py', trained['config'], corrupt, *base) == 1
    assert 'corrupt or truncated' in _error_line(capsys)
    assert not out.exists()


def test_adapter_only_with_the_transformers_folder(trained, tmp_path):
    out = tmp_path / 'model.onnx'
    assert tool_main('deploy/export_onnx.py', trained['config'], trained['adapter'],
                     '--backbone', trained['folder'], '--shape', 64, 96, '--out', out) == 0
    assert out.is_file()


def test_operator_without_onnx_form_names_its_module(trained, tmp_path):
    """Without the fixed position embedding, transformers' DINOv2-with-registers resizes it
    with antialias, which opset 17 has no form for: the error names the embeddings."""
    model = merged_for_export(init_model(trained['config'], trained['full']))
    graph = SegmentorGraph(model, (64, 96)).eval()
    with pytest.raises(ExportError) as info:
        export_graph(graph, str(tmp_path / 'x.onnx'), torch.zeros(1, 3, 64, 96), ['logits'])
    message = str(info.value)
    assert message.startswith('cannot export backbone.hf_model.embeddings '
                              '(Dinov2WithRegistersEmbeddings): '
                              'UnsupportedOperatorError: ') and '\n' not in message
    assert 'aten::_upsample_bicubic2d_aa' in message
