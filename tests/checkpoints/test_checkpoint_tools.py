"""Extract / merge / fold SoMA checkpoints and the checks run before loading one into a model."""
import os
import os.path as osp
import sys

import pytest
import torch

from soma import checkpoints as ck
from soma.checkpoints.fingerprint import backbone_fingerprint
from soma.utils.checkpoint_io import CheckpointError, load_checkpoint_file, save_checkpoint_file

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(__file__)), 'tools'))  # shared helpers
from _tool_runner import tool_main, tool_subprocess  # noqa: E402
from _ckpt_fixtures import (TARGETS, converted_backbone, head_state_dict,  # noqa: E402
                            release_full_checkpoint)


def _expected_adapter_keys(sd, prefix=''):
    """Independent listing of the released adapter layout (SPEC 4) for a fabricated model."""
    keys = set()
    for k in sd:
        plain = k[len(prefix):]
        parts = plain.split('.')
        if 'lora' in plain or plain.startswith('decode_head.') \
                or plain == 'backbone.model.mask_token':
            keys.add(k)
        elif plain.startswith('backbone.model.blocks.') and parts[-1] == 'bias' \
                and parts[-2] in TARGETS and int(parts[3]) >= 2:
            keys.add(k)
    return keys


def _assert_same(a, b):
    assert set(a) == set(b), (set(a) ^ set(b))
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- extract
def test_extract_keeps_exactly_the_released_layout():
    full = release_full_checkpoint(converted_backbone())
    full['meta']['soma'] = {'semantics': 'release', 'lora_cfg': {'r': 4}}
    out = ck.extract_soma_weights(full)
    assert set(out) == {'state_dict', 'ema_state_dict', 'meta'}
    assert set(out['state_dict']) == _expected_adapter_keys(full['state_dict'])
    assert set(out['ema_state_dict']) == _expected_adapter_keys(full['ema_state_dict'], 'module.')
    assert 'steps' not in out['ema_state_dict']
    # the patch embedding's proj.bias is not a target layer; frozen blocks 0, 1 are dropped
    assert 'backbone.model.patch_embed.proj.bias' not in out['state_dict']
    assert 'backbone.model.blocks.1.attn.q.bias' not in out['state_dict']
    fingerprint = out['meta']['soma'].pop('backbone_fingerprint')  # of the trained backbone
    assert fingerprint == backbone_fingerprint(converted_backbone())
    assert out['meta'] == {'soma': {'semantics': 'release', 'lora_cfg': {'r': 4}},
                           'dataset_meta': {'classes': ['a', 'b']}}
    for k, v in out['state_dict'].items():
        assert torch.equal(v, full['state_dict'][k])


def test_extract_without_ema_and_semantics_override():
    full = release_full_checkpoint(converted_backbone(), ema=False)
    out = ck.extract_soma_weights(full, semantics='residual')
    assert 'ema_state_dict' not in out
    assert out['meta']['soma'] == {'semantics': 'residual', 'backbone_fingerprint':
                                   backbone_fingerprint(converted_backbone())}
    assert ck.checkpoint_semantics(out) == 'residual'
    assert ck.checkpoint_semantics(ck.extract_soma_weights(full)) == 'release'


def test_extract_refuses_a_checkpoint_without_adapters():
    sd = {f'backbone.model.{k}': v for k, v in converted_backbone().items()}
    with pytest.raises(CheckpointError, match='no adapter keys'):
        ck.extract_soma_weights({'state_dict': sd})


def test_dgod_extract_keeps_neck_and_heads_and_drops_ema():
    full = release_full_checkpoint(converted_backbone())
    g = torch.Generator().manual_seed(3)
    detector_keys = ['neck.convs.0.conv.weight', 'neck.convs.0.gn.weight',
                     'query_head.transformer.encoder.layers.0.self_attn.value_proj.weight',
                     'query_head.cls_branches.0.bias', 'rpn_head.rpn_conv.weight',
                     'roi_head.0.bbox_head.fc_cls.weight', 'bbox_head.0.atss_cls.weight',
                     'bbox_head.0.atss_cls.bias']
    sd = {k: v for k, v in full['state_dict'].items() if not k.startswith('decode_head')}
    sd.update({k: torch.randn(3, 2, generator=g) for k in detector_keys})
    full['state_dict'] = sd
    out = ck.extract_soma_dgod_weights(full)
    assert set(out) == {'state_dict', 'meta'}
    expected = {k for k in sd if 'backbone' not in k} | _expected_adapter_keys(sd)
    assert set(out['state_dict']) == expected
    assert set(detector_keys) <= set(out['state_dict'])
    assert 'backbone.model.blocks.3.attn.q.weight' not in out['state_dict']
    assert 'backbone.model.blocks.3.mlp.fc2.lora_B.weight' in out['state_dict']


# ----------------------------------------------------------------------------- merge (release)
@pytest.mark.parametrize('ema', [True, False])
def test_release_round_trip_is_exact(ema):
    backbone = converted_backbone()
    full = release_full_checkpoint(backbone, ema=ema)
    adapter = ck.extract_soma_weights(full)
    merged = ck.merge_soma_weights(backbone, adapter)
    _assert_same(merged['state_dict'], full['state_dict'])
    if ema:
        expected_ema = {k: v for k, v in full['ema_state_dict'].items() if k != 'steps'}
        _assert_same(merged['ema_state_dict'], expected_ema)
    else:
        assert 'ema_state_dict' not in merged
    assert merged['meta']['soma']['semantics'] == 'release'


def test_merge_prefixes_backbone_keys_and_adapter_overwrites():
    backbone = converted_backbone()
    adapter = {'state_dict': {'backbone.model.mask_token': torch.ones(1, 64),
                              'backbone.model.blocks.3.attn.q.lora_A.weight': torch.ones(2, 64),
                              'backbone.model.blocks.3.attn.q.lora_B.weight': torch.ones(64, 2),
                              **head_state_dict()}}
    merged = ck.merge_soma_weights(backbone, adapter)['state_dict']
    assert torch.equal(merged['backbone.model.mask_token'], torch.ones(1, 64))
    assert torch.equal(merged['backbone.model.pos_embed'], backbone['pos_embed'])
    assert len(merged) == len(backbone) + 2 + len(head_state_dict())


def test_merge_refusals():
    backbone = converted_backbone()
    adapter = ck.extract_soma_weights(release_full_checkpoint(backbone, ema=False))
    fused = dict(backbone)
    fused['blocks.0.attn.qkv.weight'] = torch.zeros(192, 64)
    with pytest.raises(CheckpointError, match='unconverted DINOv2.*convert_dinov2_sora.py'):
        ck.merge_soma_weights(fused, adapter)
    with pytest.raises(CheckpointError, match='no pos_embed'):
        ck.merge_soma_weights({'foo.weight': torch.zeros(2)}, adapter)
    bad = {'state_dict': dict(adapter['state_dict'])}
    bad['state_dict']['backbone.model.blocks.3.attn.q.lora_A.weight'] = torch.zeros(4, 32)
    with pytest.raises(CheckpointError,
                       match=r'blocks\.3\.attn\.q\.lora_A\.weight.*\(4, 32\).*\(64, 64\)'):
        ck.merge_soma_weights(backbone, bad)
    deeper = {'state_dict': dict(adapter['state_dict'])}
    deeper['state_dict']['backbone.model.blocks.9.attn.q.lora_A.weight'] = torch.zeros(4, 64)
    with pytest.raises(CheckpointError, match=r'no base weight blocks\.9\.attn\.q\.weight'):
        ck.merge_soma_weights(backbone, deeper)
    with pytest.raises(CheckpointError, match='no adapter keys'):
        ck.merge_soma_weights(backbone, {'state_dict': head_state_dict()})


# ----------------------------------------------------------------------------- safetensors
def test_safetensors_round_trip(tmp_path):
    backbone = converted_backbone()
    full = release_full_checkpoint(backbone)
    full['meta']['soma'] = {'semantics': 'release'}
    path = ck.extract_file(full, str(tmp_path / 'adapter.safetensors'))
    loaded = ck.load_soma_checkpoint_file(path)
    assert set(load_checkpoint_file(path)) == {'state_dict', 'ema_state_dict', 'meta'}
    expected = ck.extract_soma_weights(full)
    _assert_same(loaded['state_dict'], expected['state_dict'])
    _assert_same(loaded['ema_state_dict'], expected['ema_state_dict'])
    assert loaded['meta'] == expected['meta']
    merged = ck.merge_soma_weights(backbone, path)
    _assert_same(merged['state_dict'], full['state_dict'])


# ----------------------------------------------------------------------------- CLIs
def test_cli_extract_and_merge(tmp_path, capsys):
    backbone = converted_backbone()
    full = release_full_checkpoint(backbone)
    save_checkpoint_file(backbone, str(tmp_path / 'converted.pth'))
    save_checkpoint_file(full, str(tmp_path / 'final.pth'))
    assert tool_main('extract_soma_weights.py', '--final_ckpt', tmp_path / 'final.pth',
                     '--soma_ckpt', tmp_path / 'soma' / 'adapter.pth') == 0
    assert tool_main('merge_soma_weights.py', '--backbone_ckpt', tmp_path / 'converted.pth',
                     '--soma_ckpt', tmp_path / 'soma' / 'adapter.pth',
                     '--merged_ckpt', tmp_path / 'merged.pth') == 0
    merged = load_checkpoint_file(str(tmp_path / 'merged.pth'))
    _assert_same(merged['state_dict'], full['state_dict'])

    # bad input: exit 1, one-line error, no output file (and no temporary left behind)
    res = tool_subprocess('merge_soma_weights.py', '--backbone_ckpt', tmp_path / 'missing.pth',
                          '--soma_ckpt', tmp_path / 'soma' / 'adapter.pth',
                          '--merged_ckpt', tmp_path / 'out' / 'never.pth')
    assert res.returncode == 1
    assert res.stderr.startswith('error: ') and 'missing.pth' in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / 'out').exists() or not os.listdir(tmp_path / 'out')
    capsys.readouterr()
    assert tool_main('extract_soma_weights.py', '--final_ckpt', tmp_path / 'converted.pth',
                     '--soma_ckpt', tmp_path / 'never.pth') == 1
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'no adapter keys' in err
    assert not (tmp_path / 'never.pth').exists()
    assert sorted(os.listdir(tmp_path)) == ['converted.pth', 'final.pth', 'merged.pth', 'soma']
    assert os.listdir(tmp_path / 'soma') == ['adapter.pth']


def test_cli_dgod_extract(tmp_path):
    full = release_full_checkpoint(converted_backbone())
    full['state_dict']['neck.convs.0.conv.weight'] = torch.ones(2, 2)
    save_checkpoint_file(full, str(tmp_path / 'final.pth'))
    assert tool_main('extract_soma_dgod_weights.py', '--final_ckpt', tmp_path / 'final.pth',
                     '--soma_ckpt', tmp_path / 'dgod.safetensors') == 0
    out = ck.load_soma_checkpoint_file(str(tmp_path / 'dgod.safetensors'))
    assert 'neck.convs.0.conv.weight' in out['state_dict'] and 'ema_state_dict' not in out


# ----------------------------------------------------------------------------- with a model
TINY_CONFIG = osp.join(osp.dirname(osp.dirname(__file__)), 'tools', 'tiny_seg_config.py')


def _perturb_trainable(model, seed=5):
    """Stand-in for training: move every trainable parameter (adapters, biases, head)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _forward(model, seed=0):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x, mode='tensor')


def _full_ckpt(model, ema=False):
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt = {'state_dict': sd, 'meta': {'soma': model.backbone.checkpoint_meta()}}
    if ema:
        ckpt['ema_state_dict'] = {f'module.{k}': v.clone() for k, v in sd.items()}
        ckpt['ema_state_dict']['steps'] = torch.tensor(3)
    return ckpt


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    path = tmp_path_factory.mktemp('bb') / 'converted.pth'
    save_checkpoint_file(converted_backbone(seed=11), str(path))
    return str(path)


def _trained_model(converted, **lora):
    from soma.apis.inference import init_model
    options = {f'model.backbone.lora_cfg.{k}': v for k, v in lora.items()}
    model = init_model(TINY_CONFIG, backbone=converted, cfg_options=options)
    return _perturb_trainable(model.train()).eval()


@pytest.mark.parametrize('svd_init_on, semantics', [('pretrained', 'residual'),
                                                    ('construction', 'release')])
def test_model_round_trip_is_exact_for_both_semantics(converted, tmp_path, svd_init_on,
                                                      semantics):
    model = _trained_model(converted, svd_init_on=svd_init_on)
    full = _full_ckpt(model, ema=True)
    assert full['meta']['soma']['semantics'] == semantics
    adapter = ck.extract_soma_weights(full)
    assert ck.checkpoint_semantics(adapter) == semantics
    save_checkpoint_file(adapter, str(tmp_path / 'adapter.pth'))
    merged = ck.merge_soma_weights(converted, str(tmp_path / 'adapter.pth'))
    _assert_same(merged['state_dict'], full['state_dict'])
    _assert_same(merged['ema_state_dict'],
                 {k: v for k, v in full['ema_state_dict'].items() if k != 'steps'})
    if semantics == 'residual':  # the adapted weights are W_res, not the pretrained ones
        backbone = load_checkpoint_file(converted)
        assert not torch.equal(merged['state_dict']['backbone.model.blocks.2.attn.q.weight'],
                               backbone['blocks.2.attn.q.weight'])


def _release_layout_adapter(model, seed=9, ema=True):
    """A released-layout checkpoint fabricated from the model's own key list (SPEC 4)."""
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    keep = _expected_adapter_keys(sd)
    adapter = {k: torch.randn(sd[k].shape, generator=g) if sd[k].is_floating_point()
               else sd[k].clone() for k in sorted(keep)}
    ckpt = {'state_dict': adapter}
    if ema:
        ckpt['ema_state_dict'] = {f'module.{k}': v + 1 for k, v in adapter.items()}
    return ckpt


@pytest.mark.parametrize('ema', [True, False])
def test_released_layout_loads_with_no_missing_or_unexpected_keys(converted, ema):
    from soma.apis.inference import init_model
    model = init_model(TINY_CONFIG)
    release = _release_layout_adapter(model, ema=ema)
    assert any('lora_A' in k for k in release['state_dict'])
    merged = ck.merge_soma_weights(converted, release)
    assert merged['meta']['soma']['semantics'] == 'release'
    result = model.load_state_dict(merged['state_dict'], strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    ck.check_checkpoint_for_model(model, merged['state_dict'], model.cfg)
    if ema:
        ema_sd = {k[len('module.'):]: v for k, v in merged['ema_state_dict'].items()}
        result = model.load_state_dict(ema_sd, strict=False)
        assert result.missing_keys == [] and result.unexpected_keys == []
        ck.load_soma_checkpoint(model, release, backbone=converted, cfg=model.cfg, use_ema=True)
        assert torch.equal(model.state_dict()['backbone.model.mask_token'],
                           release['ema_state_dict']['module.backbone.model.mask_token'])
    else:
        assert 'ema_state_dict' not in merged


def test_merged_release_adapter_predicts_like_its_source_model(converted, tmp_path):
    from soma.apis.inference import init_model
    source = _trained_model(converted, svd_init_on='construction')  # the release's behaviour
    expected = _forward(source)
    adapter = ck.extract_soma_weights(_full_ckpt(source))
    adapter.pop('meta')  # a released file carries no meta
    save_checkpoint_file(adapter, str(tmp_path / 'release.pth'))
    # our default config (SVD on pretrained) loads it through the --backbone path
    model = init_model(TINY_CONFIG, str(tmp_path / 'release.pth'), backbone=converted)
    assert torch.equal(_forward(model), expected)
    # and through a merged file
    ck.merge_file(converted, str(tmp_path / 'release.pth'), str(tmp_path / 'merged.pth'))
    model = init_model(TINY_CONFIG, str(tmp_path / 'merged.pth'))
    assert torch.equal(_forward(model), expected)


def test_residual_adapter_predicts_like_its_source_model(converted, tmp_path):
    from soma.apis.inference import init_model
    source = _trained_model(converted)
    adapter_path = ck.extract_file(_full_ckpt(source), str(tmp_path / 'a.safetensors'))
    model = init_model(TINY_CONFIG, adapter_path, backbone=converted)
    assert torch.equal(_forward(model), _forward(source))


def test_folded_checkpoint_needs_no_soma(converted, tmp_path):
    from soma.apis.inference import init_model
    source = _trained_model(converted)
    adapter_path = ck.extract_file(_full_ckpt(source), str(tmp_path / 'adapter.pth'))
    assert tool_main('generate_full_weights.py', '--backbone_ckpt', converted, '--soma_ckpt',
                     adapter_path, '--out', tmp_path / 'plain.pth', '--merge-adapters') == 0
    folded = load_checkpoint_file(str(tmp_path / 'plain.pth'))['state_dict']
    assert not any('lora' in k or k.startswith('backbone.model.') for k in folded)
    plain = init_model(TINY_CONFIG, cfg_options={
        'model.type': 'FrozenBackboneEncoderDecoder', 'model.backbone.lora_cfg': None})
    result = plain.load_state_dict(folded, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    torch.testing.assert_close(_forward(plain), _forward(source), rtol=1e-4, atol=1e-5)
    # and an independent fold: W + s * B @ A, s = lora_alpha / r = 8 / 4
    sd = source.state_dict()
    w = sd['backbone.model.blocks.3.mlp.fc1.weight'].double()
    ba = sd['backbone.model.blocks.3.mlp.fc1.lora_B.weight'].double() @ \
        sd['backbone.model.blocks.3.mlp.fc1.lora_A.weight'].double()
    torch.testing.assert_close(folded['backbone.blocks.3.mlp.fc1.weight'].double(), w + 2 * ba,
                               rtol=0, atol=1e-6)
    # loaded into the SoMA config instead: a clear refusal
    model = init_model(TINY_CONFIG)
    with pytest.raises(CheckpointError, match='plain backbone keys'):
        ck.check_checkpoint_for_model(model, folded, model.cfg)


# ----------------------------------------------------------------------------- refusals
def test_refuses_adapter_only_checkpoint_without_backbone(converted, tmp_path):
    from soma.apis.inference import init_model
    source = _trained_model(converted)
    adapter_path = ck.extract_file(_full_ckpt(source), str(tmp_path / 'adapter.pth'))
    with pytest.raises(CheckpointError) as err:
        init_model(TINY_CONFIG, adapter_path)
    msg = str(err.value)
    assert '\n' not in msg
    n_missing = sum(1 for k in source.state_dict() if k.startswith('backbone.model.')
                    and k not in load_checkpoint_file(adapter_path)['state_dict'])
    assert f'{n_missing} backbone keys are missing' in msg
    assert 'backbone.model.blocks.0.attn.k.bias' in msg
    assert (f'tools/test.py {TINY_CONFIG} {adapter_path} --backbone '
            f'checkpoints/dinov2_sora_converted_64x64.pth') in msg
    assert 'tools/merge_soma_weights.py --backbone_ckpt' in msg
    assert f'--soma_ckpt {adapter_path}' in msg


def test_refuses_backbone_converted_for_another_resolution(tmp_path):
    from soma.apis.inference import init_model
    model = init_model(TINY_CONFIG)
    adapter = _release_layout_adapter(model, ema=False)
    big = converted_backbone(img_size=128)
    merged = ck.merge_soma_weights(big, adapter)
    with pytest.raises(CheckpointError) as err:
        ck.check_checkpoint_for_model(model, merged['state_dict'], model.cfg,
                                      checkpoint_path='merged.pth')
    msg = str(err.value)
    assert 'converted for 128x128 (pos_embed grid 8x8)' in msg
    assert 'expects 64x64' in msg and '--height 64 --width 64' in msg
    assert 'convert_dinov2_sora.py' in msg


def test_refuses_backbone_of_another_width_as_such(tmp_path):
    """Another embed width is another architecture, not another resolution."""
    from soma.apis.inference import init_model
    model = init_model(TINY_CONFIG)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pos = state['backbone.model.pos_embed']
    state['backbone.model.pos_embed'] = torch.zeros(*pos.shape[:-1], pos.shape[-1] * 2)
    with pytest.raises(CheckpointError, match=r'pos_embed has embedding width 128 .* model '
                                              r'has 64 .*another size'):
        ck.check_checkpoint_for_model(model, state, model.cfg, checkpoint_path='other.pth')


def test_refuses_rank_mismatch(converted):
    from soma.apis.inference import init_model
    model = init_model(TINY_CONFIG)
    merged = ck.merge_soma_weights(converted, _release_layout_adapter(model, ema=False))
    other = init_model(TINY_CONFIG, cfg_options={'model.backbone.lora_cfg.r': 8})
    with pytest.raises(CheckpointError, match=r'rank mismatch at backbone\.model\.blocks\.2\.'
                                              r'attn\.k\.lora_A\.weight: shape \(4, 64\) \(r=4\)'
                                              r'.*\(8, 64\) \(r=8\)'):
        ck.check_checkpoint_for_model(other, merged['state_dict'], other.cfg)


def test_refuses_adapters_for_blocks_the_config_does_not_adapt(converted):
    from soma.apis.inference import init_model
    model = init_model(TINY_CONFIG)
    merged = ck.merge_soma_weights(converted, _release_layout_adapter(model, ema=False))
    later = init_model(TINY_CONFIG, cfg_options={'model.backbone.lora_cfg.start_lora_idx': 3})
    with pytest.raises(CheckpointError, match=r'does not adapt \(blocks \[2\].*start_lora_idx=3'):
        ck.check_checkpoint_for_model(later, merged['state_dict'], later.cfg)
    earlier = init_model(TINY_CONFIG, cfg_options={'model.backbone.lora_cfg.start_lora_idx': 1})
    with pytest.raises(CheckpointError, match=r'no adapter in .*blocks \[1\]'):
        ck.check_checkpoint_for_model(earlier, merged['state_dict'], earlier.cfg)


def test_refuses_head_shape_mismatch(converted):
    from soma.apis.inference import init_model
    model = init_model(TINY_CONFIG)
    merged = ck.merge_soma_weights(converted, _release_layout_adapter(model, ema=False))
    other = init_model(TINY_CONFIG, cfg_options={'model.decode_head.num_classes': 7})
    with pytest.raises(CheckpointError, match=r'shape mismatch at decode_head\.conv_seg\.'
                                              r'(weight|bias): \(19'):
        ck.check_checkpoint_for_model(other, merged['state_dict'], other.cfg)


# ----------------------------------------------------------------------------- corrupt files
class _RunsCode:
    """Pickles as a call of os.system: a checkpoint that would run code when unpickled."""

    def __reduce__(self):
        return (os.system, ('echo this-must-never-run',))


def _corrupt_files(folder):
    """A truncated .pth, random bytes, a zip whose pickle member is cut, a cut storage."""
    import zipfile
    good = str(folder / 'good.pth')
    torch.save(release_full_checkpoint(converted_backbone(), ema=False), good)
    data = open(good, 'rb').read()
    files = {}
    files['half'] = folder / 'half.pth'
    files['half'].write_bytes(data[:len(data) // 2])
    files['random'] = folder / 'random.pth'
    files['random'].write_bytes(torch.randint(0, 256, (4096, ), dtype=torch.uint8,
                                              generator=torch.Generator().manual_seed(0))
                                .numpy().tobytes())
    for name, member in (('broken_pickle', 'data.pkl'), ('broken_storage', 'data/0')):
        files[name] = folder / f'{name}.pth'
        with zipfile.ZipFile(good) as zin, zipfile.ZipFile(files[name], 'w') as zout:
            for info in zin.infolist():
                payload = zin.read(info.filename)
                if info.filename.endswith(member):
                    payload = payload[:len(payload) // 2]
                zout.writestr(info, payload)
    return files


def _merge_error(capsys, folder, backbone, soma_ckpt):
    capsys.readouterr()
    out = folder / 'out' / 'merged.pth'
    rc = tool_main('merge_soma_weights.py', '--backbone_ckpt', backbone, '--soma_ckpt', soma_ckpt,
                   '--merged_ckpt', out)
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith('error: ') and len(err.strip().splitlines()) == 1, err
    assert str(soma_ckpt) in err
    assert not (folder / 'out').exists() or not os.listdir(folder / 'out')
    return err


def test_corrupt_checkpoint_is_reported_as_corrupt(tmp_path, capsys):
    backbone = tmp_path / 'converted.pth'
    save_checkpoint_file(converted_backbone(), str(backbone))
    for name, path in _corrupt_files(tmp_path).items():
        err = _merge_error(capsys, tmp_path, backbone, path)
        assert 'corrupt or truncated checkpoint file' in err, (name, err)
        assert 'not plain data' not in err, (name, err)
    # a truncated safetensors file too
    adapter = ck.extract_soma_weights(release_full_checkpoint(converted_backbone(), ema=False))
    save_checkpoint_file(adapter, str(tmp_path / 'adapter.safetensors'))
    data = (tmp_path / 'adapter.safetensors').read_bytes()
    (tmp_path / 'cut.safetensors').write_bytes(data[:len(data) // 2])
    err = _merge_error(capsys, tmp_path, backbone, tmp_path / 'cut.safetensors')
    assert 'corrupt or truncated safetensors file' in err


def test_checkpoint_with_code_is_refused_as_not_plain_data(tmp_path, capsys):
    backbone = tmp_path / 'converted.pth'
    save_checkpoint_file(converted_backbone(), str(backbone))
    evil = tmp_path / 'evil.pth'
    ckpt = release_full_checkpoint(converted_backbone(), ema=False)
    ckpt['payload'] = _RunsCode()
    torch.save(ckpt, str(evil))
    err = _merge_error(capsys, tmp_path, backbone, evil)
    assert 'refusing to load, it holds objects that are not plain data' in err
    assert 'system' in err and 'corrupt' not in err
    assert 'this-must-never-run' not in capsys.readouterr().out


# ----------------------------------------------------------------------------- no meta: scale
from _ckpt_fixtures import target_layers  # noqa: E402


def _meta_less_full(backbone, ranks, seed=4):
    """A release-style full checkpoint without meta: ``ranks = {block: rank}``."""
    g = torch.Generator().manual_seed(seed)
    sd = {f'backbone.model.{k}': v.clone() for k, v in backbone.items()}
    for name in target_layers(backbone, start=min(ranks)):
        w, r = backbone[f'{name}.weight'], ranks[int(name.split('.')[1])]
        sd[f'backbone.model.{name}.lora_A.weight'] = torch.randn(r, w.shape[1], generator=g)
        sd[f'backbone.model.{name}.lora_B.weight'] = 0.1 * torch.randn(w.shape[0], r, generator=g)
    sd.update(head_state_dict())
    return {'state_dict': sd}


def _assert_folded(folded, full, scales):
    sd = full['state_dict']
    n = 0
    for key in sd:
        if not key.endswith('.lora_A.weight'):
            continue
        name = key[len('backbone.model.'):-len('.lora_A.weight')]
        w = sd[f'backbone.model.{name}.weight'].double()
        ba = sd[f'backbone.model.{name}.lora_B.weight'].double() @ sd[key].double()
        expected = w + scales[int(name.split('.')[1])] * ba
        torch.testing.assert_close(folded[f'backbone.{name}.weight'].double(), expected,
                                   rtol=0, atol=2e-6)
        n += 1
    assert n > 0


def test_fold_without_meta_takes_the_rank_and_scale_one(tmp_path):
    backbone = converted_backbone()
    full = _meta_less_full(backbone, {2: 4, 3: 4})  # rank 4, the release's alpha = r
    assert 'meta' not in full
    _assert_folded(ck.fold_adapters(full)['state_dict'], full, {2: 1.0, 3: 1.0})
    # the same through generate_full_weights.py --merge-adapters (adapter-only, no meta)
    adapter = ck.extract_soma_weights(full)
    adapter.pop('meta')
    save_checkpoint_file(adapter, str(tmp_path / 'adapter.pth'))
    save_checkpoint_file(backbone, str(tmp_path / 'converted.pth'))
    assert tool_main('generate_full_weights.py', '--backbone_ckpt', tmp_path / 'converted.pth',
                     '--soma_ckpt', tmp_path / 'adapter.pth', '--out', tmp_path / 'plain.pth',
                     '--merge-adapters') == 0
    folded = load_checkpoint_file(str(tmp_path / 'plain.pth'))['state_dict']
    _assert_folded(folded, full, {2: 1.0, 3: 1.0})


def test_fold_without_meta_follows_the_rank_ramp(tmp_path, capsys):
    """rank_ramp: rank r * f in block i (f = 2 from block 12) with lora_alpha = r kept, so
    the scale is r / (r * f) = 1 / f."""
    backbone = converted_backbone(depth=14)
    full = _meta_less_full(backbone, {10: 2, 11: 2, 12: 4, 13: 4})
    _assert_folded(ck.fold_adapters(full)['state_dict'], full,
                   {10: 1.0, 11: 1.0, 12: 0.5, 13: 0.5})
    # ranks in no ramp pattern, and one rank inside one ramp segment: the scale is unknown
    with pytest.raises(CheckpointError, match=r'ranks \[2, 3\] .* no rank_ramp pattern'):
        ck.fold_adapters(_meta_less_full(backbone, {10: 2, 11: 2, 12: 3, 13: 3}))
    ambiguous = _meta_less_full(backbone, {12: 4, 13: 4})
    with pytest.raises(CheckpointError, match=r'r=4 on blocks 12\.\.13 .* cannot be known'):
        ck.fold_adapters(ambiguous)
    save_checkpoint_file(ambiguous, str(tmp_path / 'ambiguous.pth'))
    save_checkpoint_file(backbone, str(tmp_path / 'converted.pth'))
    capsys.readouterr()
    assert tool_main('generate_full_weights.py', '--backbone_ckpt', tmp_path / 'converted.pth',
                     '--soma_ckpt', tmp_path / 'ambiguous.pth', '--out', tmp_path / 'x.pth',
                     '--merge-adapters') == 1
    err = capsys.readouterr().err
    assert err.startswith('error: ') and len(err.strip().splitlines()) == 1
    assert 'cannot be known' in err and not (tmp_path / 'x.pth').exists()
