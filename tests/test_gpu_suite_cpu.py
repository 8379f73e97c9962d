"""benchmarks/gpu_suite.py --cpu-tiny: every section runs (tiny sizes, CPU), its numeric
checks hold against the references, the json is written and the docs section replaced."""
import importlib.util
import json
import os.path as osp

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _suite():
    spec = importlib.util.spec_from_file_location(
        '_gpu_suite', osp.join(REPO, 'benchmarks', 'gpu_suite.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_suite_cpu_tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = _suite()
    docs = tmp_path / 'benchmarks.md'
    docs.write_text(f'# Benchmarks\n\nbefore\n\n{suite.BEGIN}\nold table\n{suite.END}\n\nafter\n')
    assert suite.main(['--cpu-tiny', '--iters', '1', '--out', 'suite.json',
                       '--docs', str(docs)]) == 0
    result = json.loads((tmp_path / 'suite.json').read_text())
    sections = result['sections']
    assert list(sections) == list(suite.SECTIONS)
    for name, entry in sections.items():
        assert 'error' not in json.dumps(entry), (name, entry)
    assert sections['msda']['forward_max_err'] < 1e-5
    assert max(sections['msda']['grad_max_err'].values()) < 1e-4
    assert sections['roi_align']['forward_max_err'] < 1e-5  # mmcv vs the torch reference
    assert sections['roi_align']['grad_max_err'] < 1e-5
    assert sections['attention']['max_abs_diff_float32'] < 1e-5
    assert sections['soma_init']['max_rel_err_BA'] < 1e-5
    windows = sections['eval_windows']
    assert windows['windows'] > windows['slide_batch_size'] and windows['label_agreement'] == 1
    assert windows['max_abs_logit_diff'] < 1e-4
    assert sections['train_step']['512_auto']['dtype'] == 'bfloat16'
    assert sections['onnx']['CPUExecutionProvider']['max_abs_diff'] < 1e-4
    text = docs.read_text()
    assert 'old table' not in text and text.count(suite.BEGIN) == 1
    assert text.startswith('# Benchmarks\n\nbefore\n\n') and text.endswith('\n\nafter\n')
    assert '| eval_windows |' in text
