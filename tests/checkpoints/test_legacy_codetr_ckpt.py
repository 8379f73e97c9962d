"""Co-DETR checkpoints in the release's (legacy mmcv) key layout load everywhere.

A tiny SoMA Co-DETR's own state dict is rewritten into the release's names with the inverse
of the nine rules of CODETR.md, written out here independently of soma.checkpoints.legacy_codetr.
That file must then load with no missing or unexpected key and predict exactly as the same
weights under our names, through the API, tools/test.py (with and without --backbone),
init_model, the merge tool and the DGOD extract tool.
"""
import copy
import logging
import os.path as osp
import pickle
import sys

import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.config import Config

import soma  # noqa: F401  (registers everything)
from soma import checkpoints as ck
from soma.apis import test as test_api
from soma.checkpoints import rename_legacy_codetr_keys
from soma.registry import DET_MODELS
from soma.utils.checkpoint_io import load_checkpoint_file, save_checkpoint_file

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(__file__)), 'tools'))  # shared helpers
from _tool_runner import tool_main  # noqa: E402

DEFAULT_SCOPE = 'mmdet'
ONE_THREAD = True  # see tests/conftest.py
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(REPO, 'DGOD', 'configs', 'demo', 'soma_tiny_codetr_demo.py')
IMG = 128  # the demo config's size
BB = 'backbone.model.'


# ------------------------------------------------------------- the release layout (inverse)
def _release_name(key, fired):
    """Our key -> the release's (CODETR.md table, read right to left)."""
    marker = 'query_head.transformer.'
    at = key.find(marker)
    if at < 0:
        return key
    head, parts = key[:at + len(marker)], key[at + len(marker):].split('.')
    rule = None
    if parts == ['level_embed']:
        parts, rule = ['level_embeds'], 'level_embeds'
    elif parts[0] in ('memory_trans_fc', 'memory_trans_norm', 'query_embedding'):
        rule = {'memory_trans_fc': 'enc_output', 'memory_trans_norm': 'enc_output_norm',
                'query_embedding': 'query_embed'}[parts[0]]
        parts[0] = rule
    elif parts[0] in ('encoder', 'decoder') and parts[1] == 'layers':
        legacy = {'self_attn': ['attentions', '0'], 'cross_attn': ['attentions', '1'],
                  'ffn': ['ffns', '0']}.get(parts[3])
        if legacy is not None:
            rule = f'{parts[0]}.{parts[3]}'
            parts[3:4] = legacy
    elif parts[:3] == ['decoder', 'ref_point_head', 'layers']:
        rule = 'ref_point_head'
        parts[1:4] = ['ref_point_head', {'0': '0', '1': '2'}[parts[3]]]
    if rule is not None:
        fired.add(rule)
    return head + '.'.join(parts)


ALL_RULES = {'level_embeds', 'enc_output', 'enc_output_norm', 'query_embed',
             'encoder.self_attn', 'decoder.self_attn', 'decoder.cross_attn', 'encoder.ffn',
             'decoder.ffn', 'ref_point_head'}  # the ffns rule covers encoder and decoder


def to_release_layout(state_dict, fired=None):
    fired = set() if fired is None else fired
    return {_release_name(k, fired): v for k, v in state_dict.items()}


# ------------------------------------------------------------- fixtures
def _build(seed):
    torch.manual_seed(seed)
    cfg = copy.deepcopy(Config.fromfile(DEMO).model)
    model = DET_MODELS.build(cfg)
    model.init_weights()
    return model.eval()


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Our model, and its weights as full / adapter-only files in both layouts."""
    root = tmp_path_factory.mktemp('legacy_codetr')
    model = _build(seed=0)
    ours = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ema = {f'module.{k}': v.clone() for k, v in ours.items()}
    paths = dict(root=root)

    def save(name, ckpt):
        paths[name] = str(root / f'{name}.pth')
        save_checkpoint_file(ckpt, paths[name])

    save('ours_full', {'state_dict': ours, 'ema_state_dict': ema})
    # the release's files carry no meta
    save('legacy_full', {'state_dict': to_release_layout(ours),
                         'ema_state_dict': to_release_layout(ema)})
    adapter = ck.extract_soma_dgod_weights({'state_dict': ours})['state_dict']
    save('ours_adapter', {'state_dict': adapter})
    save('legacy_adapter', {'state_dict': to_release_layout(adapter)})
    converted = {k[len(BB):]: v for k, v in ours.items() if k.startswith(BB) and 'lora' not in k}
    save('converted', converted)
    return model, ours, paths


@pytest.fixture(scope='module')
def config(files, tmp_path_factory):
    """The demo config pointed at a one-image-per-domain synthetic Diverse Weather."""
    from soma.datasets.synthetic_dgod import make_diverse_weather, point_config_to
    root = tmp_path_factory.mktemp('dgod_data')
    make_diverse_weather(str(root), num_train=1, num_test=1, size=64)
    cfg = Config.fromfile(DEMO)
    assert point_config_to(cfg, str(root)) > 0
    path = str(root / 'codetr_cfg.py')
    cfg.dump(path)
    return path


def _batch(n=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    inputs = [torch.randint(0, 255, (3, IMG, IMG), generator=gen).float() for _ in range(n)]
    samples = [DetDataSample(metainfo=dict(
        img_shape=(IMG, IMG), ori_shape=(IMG, IMG), scale_factor=(1.0, 1.0),
        batch_input_shape=(IMG, IMG), pad_shape=(IMG, IMG))) for _ in range(n)]
    return inputs, samples


def _predict(model):
    inputs, samples = _batch()
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=inputs, data_samples=samples), False)
        results = model(**data, mode='predict')
    return [(r.pred_instances.bboxes, r.pred_instances.scores, r.pred_instances.labels)
            for r in results]


def _assert_same_predictions(a, b):
    assert len(a) == len(b)
    for (ba, sa, la), (bb, sb, lb) in zip(a, b):
        assert len(la) > 0
        assert torch.equal(ba, bb) and torch.equal(sa, sb) and torch.equal(la, lb)


def _assert_same(a, b):
    assert list(a) == list(b) or set(a) == set(b), sorted(set(a) ^ set(b))[:5]
    for k in a:
        assert torch.equal(a[k], b[k]), k


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


# ------------------------------------------------------------- the rule itself
def test_rename_undoes_the_release_layout(files):
    _, ours, _ = files
    fired = set()
    legacy = to_release_layout(ours, fired)
    assert fired == ALL_RULES  # the tiny model exercises every one of the nine rules
    changed = [k for k in legacy if k not in ours]
    assert len(changed) > 20
    ours_words = ('self_attn', 'cross_attn', '.ffn.', 'memory_trans', 'query_embedding',
                  'ref_point_head.layers')
    assert not any(w in k for k in changed for w in ours_words)
    assert not any(k.endswith('level_embed') for k in changed)
    renamed, n = rename_legacy_codetr_keys(legacy)
    assert n == len(changed)
    assert list(renamed) == list(ours)  # same names, same order
    _assert_same(renamed, ours)
    assert rename_legacy_codetr_keys(ours) == (ours, 0)  # our own layout: untouched
    ema, n_ema = rename_legacy_codetr_keys({f'module.{k}': v for k, v in legacy.items()})
    assert n_ema == n and set(ema) == {f'module.{k}' for k in ours}


def test_mixed_layout_is_refused(files):
    _, ours, _ = files
    mixed = dict(ours)
    mixed['query_head.transformer.level_embeds'] = ours['query_head.transformer.level_embed']
    with pytest.raises(ck.CheckpointError, match='level_embeds .* and .*level_embed;'):
        rename_legacy_codetr_keys(mixed)


# ------------------------------------------------------------- loading and predicting
def test_release_layout_loads_strictly_and_predicts_like_ours(files):
    model, ours, paths = files
    expected = _predict(model)
    other = _build(seed=1)
    assert not torch.equal(other.state_dict()['query_head.transformer.level_embed'],
                           ours['query_head.transformer.level_embed'])
    from mmengine.logging import MMLogger
    records = _Records()
    logger = MMLogger.get_current_instance()
    logger.addHandler(records)
    try:
        ckpt = ck.load_soma_checkpoint(other, paths['legacy_full'], strict=True)
    finally:
        logger.removeHandler(records)
    n = sum(k not in ours for k in to_release_layout(ours))
    assert records.lines == [f'renamed {2 * n} legacy Co-DETR keys (release layout) in '
                             f'{paths["legacy_full"]}']  # state_dict + ema_state_dict
    result = _build(seed=2).load_state_dict(ckpt['state_dict'], strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    _assert_same_predictions(_predict(other.eval()), expected)
    # the EMA copy (keys behind module.) too
    third = _build(seed=3)
    ck.load_soma_checkpoint(third, paths['legacy_full'], use_ema=True)
    _assert_same(third.state_dict(), ours)
    # adapter-only release file + converted backbone
    fourth = _build(seed=4)
    ck.load_soma_checkpoint(fourth, paths['legacy_adapter'], backbone=paths['converted'])
    _assert_same_predictions(_predict(fourth.eval()), expected)


def test_init_model_accepts_the_release_layout(files, config):
    from soma.apis.inference import init_model
    _, ours, paths = files
    model = init_model(config, paths['legacy_full'])
    _assert_same(model.state_dict(), ours)
    model = init_model(config, paths['legacy_adapter'], backbone=paths['converted'])
    _assert_same(model.state_dict(), ours)


def _dumped(path):
    with open(path, 'rb') as f:  # our own DumpDetResults output
        results = pickle.load(f)
    return [(r['img_path'], r['pred_instances']) for r in results]


def test_tools_test_on_release_layout_matches_ours(files, config):
    _, _, paths = files
    root = paths['root']
    runs = {'ours': [paths['ours_full']], 'legacy': [paths['legacy_full']],
            'legacy_adapter': [paths['legacy_adapter'], '--backbone', paths['converted']]}
    for name, args in runs.items():
        test_api.test([config, *args, '--work-dir', str(root / f'work_{name}'),
                       '--out', str(root / f'{name}.pkl')])
    expected = _dumped(root / 'ours.pkl')
    assert len(expected) == 5 and any(len(p['labels']) for _, p in expected)
    for name in ('legacy', 'legacy_adapter'):
        got = _dumped(root / f'{name}.pkl')
        assert [p for p, _ in got] == [p for p, _ in expected]
        for (_, a), (_, b) in zip(got, expected):
            for key in ('bboxes', 'scores', 'labels'):
                assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key


def test_merge_and_extract_tools_accept_the_release_layout(files):
    _, ours, paths = files
    root = paths['root']
    assert tool_main('merge_soma_weights.py', '--backbone_ckpt', paths['converted'],
                     '--soma_ckpt', paths['legacy_adapter'],
                     '--merged_ckpt', root / 'merged.pth') == 0
    merged = load_checkpoint_file(str(root / 'merged.pth'))  # written with our names
    _assert_same(merged['state_dict'], ours)

    for name in ('legacy_full', 'ours_full'):
        assert tool_main('extract_soma_dgod_weights.py', '--final_ckpt', paths[name],
                         '--soma_ckpt', root / f'extract_{name}.pth') == 0
    from_legacy = load_checkpoint_file(str(root / 'extract_legacy_full.pth'))['state_dict']
    from_ours = load_checkpoint_file(str(root / 'extract_ours_full.pth'))['state_dict']
    assert list(from_legacy) == list(from_ours)
    _assert_same(from_legacy, from_ours)
    _assert_same(from_ours, load_checkpoint_file(paths['ours_adapter'])['state_dict'])


def test_runner_load_from_renames_the_release_layout(files, config, tmp_path):
    """``load_from`` a release-layout file in training: LegacyKeysHook renames it before the
    runner's (non-strict) load, so every weight of the model is the file's."""
    from mmengine.runner import Runner
    _, ours, paths = files
    cfg = Config.fromfile(config)
    assert any(h['type'] == 'LegacyKeysHook' for h in cfg.custom_hooks)
    cfg.work_dir = str(tmp_path)
    cfg.load_from = paths['legacy_full']
    runner = Runner.from_cfg(cfg)
    runner.load_or_resume()
    got = runner.model.state_dict()
    assert set(got) == set(ours)
    for key, value in ours.items():
        assert torch.equal(got[key], value), key
