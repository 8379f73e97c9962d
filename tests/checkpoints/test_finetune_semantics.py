"""Fine-tuning from a merged released model keeps its meaning, through the tools.

The 1/16-Cityscapes recipe starts (``load_from``) from a released adapter merged with the
converted backbone: its adapted weights are W_pretrained ('release'). The checkpoints of that
run must say 'release', so extract + merge (or ``--backbone``) rebuild the same model, not
W_res + B@A.
"""
import copy
import os
import os.path as osp
import sys

import numpy as np
import torch

import soma  # noqa: F401
from soma.apis import train as train_api
from soma.apis.demo import demo_config
from soma.apis.inference import inference_model, init_model
from soma.datasets import make_synthetic_dg_benchmark
from soma.utils.checkpoint_io import load_checkpoint_file, save_checkpoint_file

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(__file__)), 'tools'))  # shared helpers
from _tool_runner import tool_main  # noqa: E402
from _ckpt_fixtures import converted_backbone  # noqa: E402
from conftest import TINY_FCN_HEAD  # noqa: E402

SIZE = 64
FCN_HEAD = TINY_FCN_HEAD


def _config(data_root, work, converted, load_from):
    """The demo config at 64 px with an FCN head, EMA, a Pretrained init and ``load_from``."""
    cfg = demo_config(data_root, work, 2, val=False, image_size=SIZE)
    cfg.model.decode_head = copy.deepcopy(FCN_HEAD)
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=converted)
    cfg.custom_hooks.append(dict(type='EMAHook', begin_iter=1, priority='NORMAL'))
    cfg.default_hooks.logger.interval = 1
    cfg.load_from = load_from
    path = osp.join(work, 'cfg.py')
    os.makedirs(work, exist_ok=True)
    cfg.dump(path)
    return path, cfg


def _released_adapter(cfg, converted_sd):
    """An adapter checkpoint as released: no meta, trained lora/biases/mask token/head + EMA."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from soma.checkpoints import is_adapter_key
    init_default_scope('mmseg')
    sd = MODELS.build(copy.deepcopy(cfg.model)).state_dict()
    g = torch.Generator().manual_seed(3)
    adapter = {}
    for key, value in sd.items():
        if key.startswith('decode_head.') or is_adapter_key(key, adapted_blocks={2, 3}):
            adapter[key] = value.clone()
            if value.is_floating_point():
                adapter[key] = value + 0.1 * torch.randn(value.shape, generator=g)
            plain = key[len('backbone.model.'):]
            if key.endswith('.bias') and plain in converted_sd:
                adapter[key] = converted_sd[plain] + 0.1
    ema = {f'module.{k}': v + 0.01 if v.is_floating_point() else v.clone()
           for k, v in adapter.items()}
    ema['steps'] = torch.tensor(5)
    return {'state_dict': adapter, 'ema_state_dict': ema}


def _logits(model, image):
    return inference_model(model, image).seg_logits.data


def test_finetuning_a_merged_release_keeps_release_semantics(tmp_path):
    data_root = str(tmp_path / 'data')
    make_synthetic_dg_benchmark(data_root, num_train=4, num_val=1, size=(SIZE, SIZE))
    converted_sd = converted_backbone(seed=11, init_values=1.0)
    converted = str(tmp_path / 'converted.pth')
    torch.save(converted_sd, converted)
    work = str(tmp_path / 'finetune')
    config, cfg = _config(data_root, work, converted, str(tmp_path / 'merged_release.pth'))

    # the released model: adapter checkpoint (no meta) + converted backbone, merge tool
    adapter = str(tmp_path / 'released_adapter.pth')
    save_checkpoint_file(_released_adapter(cfg, converted_sd), adapter)
    assert tool_main('merge_soma_weights.py', '--backbone_ckpt', converted, '--soma_ckpt',
                     adapter, '--merged_ckpt', cfg.load_from) == 0
    assert load_checkpoint_file(cfg.load_from)['meta']['soma']['semantics'] == 'release'

    # fine-tune two iterations from it (tools/train.py)
    assert train_api.main([config, '--work-dir', work]) == 0
    final = osp.join(work, 'iter_2.pth')
    ckpt = load_checkpoint_file(final)
    assert ckpt['meta']['soma']['semantics'] == 'release'
    q = 'backbone.model.blocks.3.attn.q.weight'
    assert torch.equal(ckpt['state_dict'][q], converted_sd['blocks.3.attn.q.weight'])  # W_pre
    lora = 'backbone.model.blocks.3.attn.q.lora_A.weight'
    released = load_checkpoint_file(adapter)['state_dict'][lora]
    assert not torch.equal(ckpt['state_dict'][lora], released)  # it did train

    # extract its adapters, merge them with the converted backbone: the same model
    extracted, merged = str(tmp_path / 'finetuned_adapter.pth'), str(tmp_path / 'merged.pth')
    assert tool_main('extract_soma_weights.py', '--final_ckpt', final,
                     '--soma_ckpt', extracted) == 0
    assert load_checkpoint_file(extracted)['meta']['soma']['semantics'] == 'release'
    assert tool_main('merge_soma_weights.py', '--backbone_ckpt', converted, '--soma_ckpt',
                     extracted, '--merged_ckpt', merged) == 0
    rebuilt = load_checkpoint_file(merged)
    ckpt['ema_state_dict'].pop('steps')  # EMA's counter: not part of an adapter (SPEC 4)
    for copy_key in ('state_dict', 'ema_state_dict'):
        assert set(rebuilt[copy_key]) == set(ckpt[copy_key])
        different = [k for k, v in ckpt[copy_key].items()
                     if not torch.equal(rebuilt[copy_key][k], v)]
        assert not different, different[:3]

    image = np.random.RandomState(0).randint(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    want = _logits(init_model(config, final), image)
    assert torch.equal(_logits(init_model(config, merged), image), want)
    # tools/test.py --backbone: the adapter-only checkpoint merged when loaded
    assert torch.equal(_logits(init_model(config, extracted, backbone=converted), image), want)

    # the old labelling ('residual') would rebuild W_res and give another model
    wrong = str(tmp_path / 'wrong.pth')
    assert tool_main('extract_soma_weights.py', '--final_ckpt', final, '--soma_ckpt', wrong,
                     '--semantics', 'residual') == 0
    other = _logits(init_model(config, wrong, backbone=converted), image)
    assert not torch.allclose(other, want, rtol=1e-4, atol=1e-4)
