"""Fabricated checkpoints for the checkpoint-tool tests (tiny DINOv2: embed 64, depth 4)."""
import torch

TARGETS = ('q', 'k', 'v', 'proj', 'fc1', 'fc2')
TINY = dict(img_size=64, patch_size=16, embed_dim=64, depth=4, num_heads=2,
            out_indices=(0, 1, 2, 3))


def converted_backbone(seed=0, **overrides):
    """A converted-layout DINOv2 state dict (plain keys) with non-trivial values."""
    from soma.models.backbones.dinov2 import DinoVisionTransformer
    torch.manual_seed(seed)
    model = DinoVisionTransformer(**dict(TINY, **overrides))
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for k, v in sd.items():
        if k.endswith('bias') or 'norm' in k or 'gamma' in k:
            sd[k] = v + 0.05 * torch.randn_like(v)
    return sd


def target_layers(backbone, start=2):
    """Names of the adapted layers (blocks >= start, six targets), as in the release."""
    names = []
    for key in backbone:
        parts = key.split('.')
        if key.startswith('blocks.') and key.endswith('.weight') and parts[-2] in TARGETS \
                and int(parts[1]) >= start:
            names.append(key[:-len('.weight')])
    return names


def head_state_dict(seed=1):
    torch.manual_seed(seed)
    return {'decode_head.conv_seg.weight': torch.randn(19, 16, 1, 1),
            'decode_head.conv_seg.bias': torch.randn(19),
            'decode_head.pixel_decoder.proj.weight': torch.randn(16, 64)}


def release_full_checkpoint(backbone, r=4, start=2, seed=2, ema=True):
    """A full checkpoint of the release's semantics: weight = W_pretrained, trained B, A."""
    g = torch.Generator().manual_seed(seed)
    sd = {f'backbone.model.{k}': v.clone() for k, v in backbone.items()}
    for name in target_layers(backbone, start):
        w = backbone[f'{name}.weight']
        sd[f'backbone.model.{name}.lora_A.weight'] = torch.randn(r, w.shape[1], generator=g)
        sd[f'backbone.model.{name}.lora_B.weight'] = 0.1 * torch.randn(w.shape[0], r, generator=g)
        sd[f'backbone.model.{name}.bias'] = backbone[f'{name}.bias'] + 0.1
    sd['backbone.model.mask_token'] = torch.randn(1, 64, generator=g)
    sd.update(head_state_dict())
    ckpt = {'state_dict': sd, 'meta': {'dataset_meta': {'classes': ['a', 'b']}},
            'optimizer': {'state': {}}}
    if ema:
        # EMA of frozen weights is the weight itself; trained ones differ
        ema_sd = {f'module.{k}': v + 0.01 if ('lora' in k or 'decode_head' in k
                                              or 'mask_token' in k) else v.clone()
                  for k, v in sd.items()}
        ema_sd['steps'] = torch.tensor(7)
        ckpt['ema_state_dict'] = ema_sd
    return ckpt


def perturbed_tiny_model(config, converted, scale, seed=0):
    """The tiny segmentor of ``config`` on the ``converted`` backbone file, every trainable
    parameter moved by ``scale * N(0, 1)`` (a 'trained' model with non-zero adapters)."""
    from soma.apis.inference import init_model
    model = init_model(config, backbone=converted)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))
    return model, g
