"""tools/collect_results.py on two tiny real runs (SoMA and a peft LoRA) of tools/train.py."""
import copy
import csv
import json
import os
import os.path as osp
import sys

import pytest

import soma  # noqa: F401
from soma.apis import train as train_api
from soma.apis.collect_results import PAPER_RESULTS, collect_results, method_name
from soma.apis.demo import demo_config
from soma.datasets import make_synthetic_dg_benchmark

sys.path.insert(0, osp.dirname(__file__))
from _tool_runner import tool_main  # noqa: E402
from conftest import TINY_FCN_HEAD  # noqa: E402

SIZE = 64
FCN_HEAD = TINY_FCN_HEAD
LORA = dict(type='LoraConfig', r=2, lora_alpha=2, start_lora_idx=2,
            target_modules=['q', 'k', 'v', 'proj', 'fc1', 'fc2'])


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    data = tmp_path_factory.mktemp('collect_data')
    make_synthetic_dg_benchmark(data, num_train=2, num_val=1, size=(SIZE, SIZE))
    dirs = {}
    for name, backbone in (('soma', {}), ('lora', dict(lora_cfg=None, peft_cfg=LORA))):
        work = str(tmp_path_factory.mktemp(f'run_{name}'))
        cfg = demo_config(str(data), work, 2, val=True, image_size=SIZE)
        cfg.model.decode_head = copy.deepcopy(FCN_HEAD)
        cfg.model.backbone.update(backbone)
        cfg.default_hooks.logger.interval = 1
        path = osp.join(work, f'{name}_tiny.py')
        cfg.dump(path)
        assert train_api.main([path, '--work-dir', work]) == 0
        dirs[name] = work
    return dirs


def _last_eval(work):
    (stamp,) = [d for d in os.listdir(work) if osp.isdir(osp.join(work, d))]
    with open(osp.join(work, stamp, 'vis_data', 'scalars.json')) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if 'mean_mIoU' in r][-1]


def test_table_values_equal_the_json_logs(runs, tmp_path):
    out = str(tmp_path / 'table' / 'results')
    assert tool_main('collect_results.py', runs['soma'], runs['lora'], '--out', out) == 0
    with open(out + '.csv') as f:
        table = list(csv.DictReader(f))
    assert [r['method'] for r in table] == ['SoMA (start 2, r 8)', 'LoRA']
    for row, name in zip(table, ('soma', 'lora')):
        logged = _last_eval(runs[name])
        assert float(row['fog mIoU']) == pytest.approx(logged['fog_mIoU'], abs=5e-3)
        assert float(row['night mIoU']) == pytest.approx(logged['night_mIoU'], abs=5e-3)
        assert float(row['mean']) == pytest.approx(logged['mean_mIoU'], abs=5e-3)
        assert int(row['iterations']) == logged['step'] == 2
        assert row['backbone'] == 'DINOv2-64' and int(row['trainable params']) > 0
    # the peft run trains fewer parameters than SoMA (r 2 vs 8, no biases)
    assert int(table[1]['trainable params']) < int(table[0]['trainable params'])
    with open(out + '.md') as f:
        markdown = f.read()
    assert markdown.count('\n') == 4 and '| LoRA |' in markdown
    with open(out + '.png', 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_paper_numbers_and_method_names():
    from mmengine.config import Config
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    names = {rel: method_name(Config.fromfile(osp.join(root, rel))) for rel in (
        'configs/soma/soma_dinov2-L_mask2former.py',
        'configs/peft_baselines/milora_dinov2-L_mask2former.py',
        'configs/peft_baselines/dora_dinov2-L_mask2former.py',
        'configs/peft_baselines/pissa_dinov2-L_mask2former.py',
        'configs/ablations/soma_dinov2-L_mask2former_random.py',
        'configs/soma/frozen_dinov2-L_mask2former.py')}
    assert list(names.values()) == ['SoMA', 'MiLoRA', 'DoRA', 'PiSSA', 'SoMA random',
                                    'frozen backbone']
    assert PAPER_RESULTS[('LoRA', 'Diverse Weather')]['night_rainy'] == 46.1
    assert PAPER_RESULTS[('SoMA', 'GTAV -> C, B, M (512)')]['mean'] == 68.27


def test_bad_work_dirs_are_named_after_the_table_of_the_good_ones(runs, tmp_path, capsys):
    out = tmp_path / 'results'
    empty = tmp_path / 'empty'
    empty.mkdir()
    for bad in (str(empty), str(tmp_path / 'missing')):
        assert tool_main('collect_results.py', runs['soma'], bad, '--out', str(out)) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith('error: ') and '\n' not in err and osp.basename(bad) in err
        with open(str(out) + '.csv') as f:  # the good run's table is written
            assert [r['run'] for r in csv.DictReader(f)] == [osp.basename(runs['soma'])]
    broken = tmp_path / 'broken'
    (broken / '20240101_000000' / 'vis_data').mkdir(parents=True)
    (broken / '20240101_000000' / 'vis_data' / 'scalars.json').write_text('{"a": 1}\n{oops\n')
    alone = tmp_path / 'alone' / 'results'
    assert tool_main('collect_results.py', str(broken), '--out', str(alone)) == 1
    assert 'scalars.json:2: not json' in capsys.readouterr().err
    assert not (tmp_path / 'alone').exists()  # no good run: nothing written
