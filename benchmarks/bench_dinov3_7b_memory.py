"""Per-GPU memory of SoMA on DINOv3-7B (configs/soma/soma_dinov3-7B_mask2former.py), estimated
from measured reduced-size training steps of the backbone.

    python benchmarks/bench_dinov3_7b_memory.py [--batch 4] [--crop 512] [--out FILE.json]

Measured on the CPU (no GPU needed), for DINOv3 ViTs with the 7B's shape rules (SwiGLU of
width 2 x D, no q/k/v biases, head dim 128, 4 registers), bfloat16 weights, SoMA r=16 on
blocks >= depth // 3, one training step (maps -> sum of squares -> backward -> AdamW):

* weights, trainable parameters, gradients and AdamW state: bytes of the tensors themselves,
  counted exactly on the meta device for the full 7B (no extrapolation needed);
* activations: the bytes autograd saves for the backward pass (``saved_tensors_hooks``,
  storages counted once), with and without activation checkpointing, at two widths and two
  depths. Per token and block these are linear in the width D (checked: the bytes per token,
  block and channel agree at both widths), so

      A_ckpt(7B) = T x (depth x c_in + c_out) x D       (kept during the forward pass)
      A_block(7B) = T x c_block x D                      (one block recomputed in backward)

  with T = batch x (tokens per image, 5 prefix tokens included), c_* bytes per token and
  channel measured here; the peak is A_ckpt + A_block.

Not included: the Mask2Former head (as in the DINOv2-L recipe, but for its input projections
from 4096 channels) and the framework's workspace (CUDA context, allocator caching).
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GIB = 1024 ** 3
HEAD_DIM = 128
PREFIX = 5  # CLS + 4 registers


def dinov3_7b_like(width, depth):
    """DINOv3 fields with the 7B's shape rules (SwiGLU 2 x D, no q/k/v biases)."""
    return dict(model_type='dinov3_vit', hidden_size=width, num_hidden_layers=depth,
                num_attention_heads=max(1, width // HEAD_DIM), intermediate_size=2 * width,
                patch_size=16, num_register_tokens=4, use_gated_mlp=True, hidden_act='silu',
                query_bias=False, value_bias=False, pos_embed_rescale=None)


def _soma_backbone(model, checkpointing, device=None):
    from soma.models.backbones.hf_vision import HFVisionBackbone
    from soma.models.backbones.supported import SOMA_R16
    from soma.models.peft_backbone import wrap_backbone_with_soma
    depth = model['num_hidden_layers']
    out = [depth // 4, depth // 2, 3 * depth // 4, depth - 1]
    with torch.device(device or 'cpu'):
        backbone = HFVisionBackbone(model=model, out_indices=out, dtype='bfloat16',
                                    gradient_checkpointing=checkpointing,
                                    lora_cfg=dict(SOMA_R16))
        wrapped = wrap_backbone_with_soma(backbone)
    return wrapped


def tensor_bytes(model):
    """Bytes of weights, trainable parameters, their gradients and AdamW's two moments (in
    the parameters' dtype, as torch.optim.AdamW keeps them)."""
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    return dict(
        weights=sum(p.numel() * p.element_size() for p in params),
        trainable=sum(p.numel() * p.element_size() for p in trainable),
        trainable_params=sum(p.numel() for p in trainable),
        gradients=sum(p.numel() * p.element_size() for p in trainable),
        adamw_state=2 * sum(p.numel() * p.element_size() for p in trainable))


def saved_activation_bytes(model, x):
    """Bytes autograd keeps during the forward pass for the backward pass of
    ``loss(model(x))``, each storage once; the parameters, saved by every linear, are
    weights, not activations. (A checkpointed block's recomputation in backward is outside
    these hooks: its size is that of a block without checkpointing.)"""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, total = set(), [0]

    def pack(t):
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in seen and storage.data_ptr() not in params:
            seen.add(key)
            total[0] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs = model(x)
        loss = sum(o.float().square().mean() for o in outs)
    forward = total[0]
    loss.backward()
    return forward


def measure(width, depth, batch, tokens_side):
    """One bf16 training step of the reduced model; bytes per token and channel."""
    from soma.models.peft_backbone import init_soma_after_weights
    torch.manual_seed(0)
    model = dinov3_7b_like(width, depth)
    x = torch.randn(batch, 3, 16 * tokens_side, 16 * tokens_side)
    tokens = batch * (tokens_side ** 2 + PREFIX)
    result = dict(width=width, depth=depth, batch=batch, tokens=tokens)
    for checkpointing in (True, False):
        wrapped = _soma_backbone(model, checkpointing)
        init_soma_after_weights(wrapped)
        wrapped.train()
        key = 'ckpt' if checkpointing else 'plain'
        result[f'{key}_forward_bytes'] = saved_activation_bytes(wrapped, x)
        if checkpointing:
            optim = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad])
            optim.step()
            result['adamw_state_bytes'] = sum(
                t.numel() * t.element_size() for s in optim.state.values()
                for t in s.values() if torch.is_tensor(t) and t.ndim > 0)
            result.update(tensor_bytes(wrapped))
    result['plain_per_token_block_channel'] = (
        result['plain_forward_bytes'] / (tokens * depth * width))
    result['ckpt_per_token_block_channel'] = (
        result['ckpt_forward_bytes'] / (tokens * depth * width))
    return result


def estimate(runs, batch, crop, width=4096, depth=40):
    """Extrapolate the measured constants to the 7B (see the module docstring)."""
    from soma.models.backbones.supported import SUPPORTED_BACKBONES
    row = next(r for r in SUPPORTED_BACKBONES if r.size == 'ViT-7B/16')
    assert (row.model['hidden_size'], row.model['num_hidden_layers']) == (width, depth)
    bf16 = tensor_bytes(_soma_backbone(row.model, True, device='meta').train())
    tokens = batch * ((crop // 16) ** 2 + PREFIX)
    # two depths at one width separate the per-block part from the rest (stem + outputs)
    by_width = {}
    for run in runs:
        by_width.setdefault(run['width'], []).append(run)
    c_block, c_in, c_out = [], [], []
    for w, pair in sorted(by_width.items()):
        (a, b) = sorted(pair, key=lambda r: r['depth'])[:2]
        per_block_ckpt = (b['ckpt_forward_bytes'] - a['ckpt_forward_bytes']) / (
            b['depth'] - a['depth'])
        c_in.append(per_block_ckpt / (a['tokens'] * w))
        c_out.append((a['ckpt_forward_bytes'] - a['depth'] * per_block_ckpt) / (a['tokens'] * w))
        per_block_plain = (b['plain_forward_bytes'] - a['plain_forward_bytes']) / (
            b['depth'] - a['depth'])
        c_block.append(per_block_plain / (a['tokens'] * w))
    c_in, c_out, c_block = max(c_in), max(c_out), max(c_block)
    activations_ckpt = tokens * (depth * c_in + c_out) * width
    one_block = tokens * c_block * width
    total = (bf16['weights'] + bf16['gradients'] + bf16['adamw_state'] + activations_ckpt
             + one_block)
    return dict(
        batch=batch, crop=crop, tokens=tokens, trainable_params=bf16['trainable_params'],
        weights_gib=bf16['weights'] / GIB, gradients_gib=bf16['gradients'] / GIB,
        adamw_state_gib=bf16['adamw_state'] / GIB,
        c_in_bytes_per_token_channel_block=c_in, c_out_bytes_per_token_channel=c_out,
        c_block_bytes_per_token_channel=c_block,
        activations_checkpointed_gib=activations_ckpt / GIB,
        one_block_recompute_gib=one_block / GIB,
        activations_without_checkpointing_gib=(tokens * (depth * c_block + c_out) * width
                                               / GIB),
        backbone_total_gib=total / GIB)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch', type=int, default=4, help='images per GPU (7B estimate)')
    parser.add_argument('--crop', type=int, default=512)
    parser.add_argument('--out', default=None, help='json with every measurement')
    args = parser.parse_args(argv)
    from mmengine.logging import MMLogger
    MMLogger.get_instance('bench_dinov3_7b_memory', log_level='WARNING')  # no init tables
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    runs = [measure(w, d, batch=1, tokens_side=8) for w in (128, 256) for d in (3, 6)]
    for run in runs:
        print(f"D={run['width']:4d} depth={run['depth']}: saved bytes / (token x block x "
              f"channel) = {run['plain_per_token_block_channel']:.2f} plain, "
              f"{run['ckpt_per_token_block_channel']:.2f} checkpointed")
    result = estimate(runs, args.batch, args.crop)
    for key, value in result.items():
        print(f'{key}: {value:.3f}' if isinstance(value, float) else f'{key}: {value}')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(runs=runs, estimate=result), f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
