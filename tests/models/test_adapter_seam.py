"""The adapter seam outside mmengine: ``init_soma_after_weights`` loads the backbone's own
``init_cfg`` before the adapters' init reads the weights, and ``refreeze_soma`` alone (no
``train()`` call) applies the exact trainable set, for SoMA and ``peft`` adapters."""
import pytest
import torch

import soma  # noqa: F401
from soma.models.backbones.dinov2 import DinoVisionTransformer
from soma.models.peft_backbone import (init_soma_after_weights, refreeze_soma,
                                       wrap_backbone_with_soma)

ONE_THREAD = True
VIT = dict(img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=2, init_values=1.0,
           out_indices=[0, 1, 2, 3])
TARGETS = ['q', 'k', 'v', 'proj', 'fc1', 'fc2']
LAYERS = {'q': 'attn.q', 'k': 'attn.k', 'v': 'attn.v', 'proj': 'attn.proj', 'fc1': 'mlp.fc1',
          'fc2': 'mlp.fc2'}
SOMA = dict(type='sora', r=4, lora_alpha=8, target_modules=TARGETS, start_lora_idx=2)
PEFT = dict(type='LoraConfig', r=4, lora_alpha=8, target_modules=TARGETS, start_lora_idx=2)


@pytest.fixture(scope='module')
def pretrained_file(tmp_path_factory):
    torch.manual_seed(7)
    state = {k: v + 0.05 * torch.randn_like(v)
             for k, v in DinoVisionTransformer(**VIT).state_dict().items()}
    path = str(tmp_path_factory.mktemp('pretrained') / 'converted.pth')
    torch.save(state, path)
    return path, state


def _adapted_names():
    return [f'blocks.{i}.{LAYERS[t]}' for i in (2, 3) for t in TARGETS]


@pytest.mark.parametrize('method', ['soma', 'pissa'])
def test_init_after_weights_loads_the_backbones_init_cfg_first(pretrained_file, method):
    path, saved = pretrained_file
    init_cfg = dict(type='Pretrained', checkpoint=path)
    torch.manual_seed(0)  # the random init differs from the file everywhere
    if method == 'soma':
        backbone = DinoVisionTransformer(**VIT, lora_cfg=SOMA, init_cfg=init_cfg)
    else:
        backbone = DinoVisionTransformer(**VIT, peft_cfg=dict(PEFT, init_lora_weights='pissa'),
                                         init_cfg=init_cfg)
    wrapped = wrap_backbone_with_soma(backbone)
    init_soma_after_weights(wrapped)  # called outside mmengine: nobody ran init_weights()
    modules = dict(wrapped.named_modules())
    prefix = 'model.' if method == 'soma' else ''
    for name in _adapted_names():
        layer = modules[prefix + name]
        if method == 'soma':
            weight, a, b, s = layer.weight, layer.lora_A.weight, layer.lora_B.weight, layer.scaling
        else:
            weight = layer.get_base_layer().weight
            a, b = layer.lora_A['default'].weight, layer.lora_B['default'].weight
            s = layer.scaling['default']
        effective = weight.double() + s * b.double() @ a.double()
        torch.testing.assert_close(effective, saved[f'{name}.weight'].double(), rtol=0,
                                   atol=1e-5)
    inner = wrapped.model if method == 'soma' else wrapped
    torch.testing.assert_close(inner.blocks[0].attn.q.weight, saved['blocks.0.attn.q.weight'],
                               rtol=0, atol=0)
    torch.testing.assert_close(inner.pos_embed, saved['pos_embed'], rtol=0, atol=0)


def _expected_trainable(method):
    """Independent listing: the adapters and the target biases of blocks 2-3, the mask token
    (SoMA: bias='all' by default; peft LoRA: bias='none', adapters only)."""
    names = set()
    for layer in _adapted_names():
        if method == 'soma':
            names |= {f'model.{layer}.lora_A.weight', f'model.{layer}.lora_B.weight',
                      f'model.{layer}.bias'}
        else:
            names |= {f'{layer}.lora_A.default.weight', f'{layer}.lora_B.default.weight'}
    if method == 'soma':
        names.add('model.mask_token')
    return names


@pytest.mark.parametrize('method', ['soma', 'peft'])
def test_refreeze_alone_applies_the_exact_trainable_set(method):
    cfg = dict(lora_cfg=SOMA) if method == 'soma' else dict(peft_cfg=PEFT)
    wrapped = wrap_backbone_with_soma(DinoVisionTransformer(**VIT, **cfg))
    for param in wrapped.parameters():
        param.requires_grad_(True)
    refreeze_soma(wrapped)  # no train() call: the rules come from refreeze alone
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable == _expected_trainable(method)
