"""Forward + backward of an adapted DINOv2 ViT-L (512x512, batch 1): SoMA vs plain LoRA.

    python benchmarks/bench_train_step.py [--arch large] [--size 512] [--batch 1] [--iters 3]
        [--warmup 1] [--r 16] [--start 8] [--svd-init] [--no-peak]
        [--out work_dirs/benchmarks/train_step.json]

Variants, all on the same ``DinoVisionTransformer`` (random init, same seed):

* ``soma``: ``SoMAModel`` (r=16, the six targets, blocks >= 8), trainable: adapters, target
  biases of the adapted blocks, mask token;
* ``lora``: plain LoRA of equal rank from the real ``peft`` package
  (``inject_adapter_in_model`` with the same targets and ``layers_to_transform``), with
  exactly the same trainable set (adapters, the same biases, mask token);
* ``full`` (memory only): every parameter trainable, i.e. a full autograd graph.

Timing: after ``--warmup`` steps each, ``--iters`` steps of soma and lora are interleaved
(soma, lora, soma, ...) so load changes on a shared CPU hit both; the figures are the median
of the paired ratios (step i of soma over step i of lora) and the ratio of the fastest
steps (target <= 1.05). Adapter values do not change the cost, so they are
random unless ``--svd-init`` runs the real SVD initialisation.

Activation memory: during one forward, every tensor autograd saves for backward passes a
``saved_tensors_hooks`` pack hook; its storage bytes are summed per block (unique storages,
parameters excluded).
Blocks before ``start_lora_idx`` run on inputs that do not require grad with parameters that
do not require grad, so autograd records nothing there: their saved bytes are 0 and their
outputs have ``requires_grad=False`` (both checked). Peak memory (``--no-peak`` to skip):
``torch.profiler`` with ``profile_memory=True`` records every CPU allocation and free during
one forward+backward; the peak of their running sum is the most memory the step had live
beyond the model (activations, gradients, workspaces). Writes only ``--out``.
"""
import argparse
import json
import os
import os.path as osp
import platform
import statistics
import sys
import time

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

TARGETS = ['q', 'k', 'v', 'proj', 'fc1', 'fc2']


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', default='large')
    parser.add_argument('--size', type=int, default=512)
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--iters', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--r', type=int, default=16)
    parser.add_argument('--start', type=int, default=8, help='start_lora_idx')
    parser.add_argument('--svd-init', action='store_true', help='run the real SVD init')
    parser.add_argument('--no-peak', action='store_true',
                        help='skip the profiler peak-memory steps')
    parser.add_argument('--out', default='work_dirs/benchmarks/train_step.json')
    return parser.parse_args(argv)


def backbone(args):
    from soma.models.backbones.dinov2 import ARCH_SETTINGS, DinoVisionTransformer
    depth = ARCH_SETTINGS[args.arch]['depth']
    out_indices = ((7, 11, 15, 23) if depth == 24
                   else tuple(depth * k // 4 - 1 for k in (1, 2, 3, 4)))
    torch.manual_seed(0)
    return DinoVisionTransformer(arch=args.arch, img_size=args.size, patch_size=16,
                                 out_indices=out_indices)


def _trainable_name(name, args):
    """SoMA's trainable set, written for both layouts (SoMA and peft key names)."""
    from soma.peft import ALWAYS_FROZEN_KEYWORDS, block_index
    if any(k in name for k in ALWAYS_FROZEN_KEYWORDS):
        return False
    idx = block_index(name)
    if idx is not None and idx < args.start:
        return False
    if 'lora' in name or 'mask_token' in name:
        return True
    module = name.rpartition('.')[0].removesuffix('.base_layer')
    return name.endswith('.bias') and idx is not None and module.rpartition('.')[2] in TARGETS


def build(variant, args):
    """The model of one variant, in train mode, with its trainable set."""
    from soma.peft import SoMAConfig, SoMAModel
    vit = backbone(args)
    if variant == 'soma':
        model = SoMAModel(SoMAConfig(r=args.r, lora_alpha=args.r, start_lora_idx=args.start),
                          vit, init_adapters=args.svd_init)
    elif variant == 'lora':
        import peft
        config = peft.LoraConfig(r=args.r, lora_alpha=args.r, target_modules=TARGETS,
                                 layers_to_transform=list(range(args.start, vit.depth)),
                                 layers_pattern='blocks', bias='none')
        model = peft.inject_adapter_in_model(config, vit)
    elif variant == 'full':
        model = vit
    else:
        raise ValueError(f'unknown variant {variant!r}')
    model.train()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'lora' in name and not (variant == 'soma' and args.svd_init):
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
            p.requires_grad_(True if variant == 'full' else _trainable_name(name, args))
    return model


def step(model, x):
    start = time.perf_counter()
    outs = model(x)
    loss = sum(o.float().square().mean() for o in outs)
    loss.backward()
    for p in model.parameters():
        p.grad = None
    return time.perf_counter() - start


def blocks_of(model):
    inner = getattr(model, 'model', model)
    return inner.blocks


def saved_activation_bytes(model, x):
    """Activation bytes autograd saves for backward during one forward, per block, and
    whether each block's output requires grad."""
    current = ['other']
    # parameters saved for backward (e.g. a weight, to form the input's gradient) are not
    # activations: their storages are skipped
    seen = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved, grad_flags = {}, {}
    hooks = []
    def enter(i):
        def hook(module, args):
            current[0] = i
        return hook

    def leave(i):
        def hook(module, args, out):
            grad_flags[i] = bool(out.requires_grad)
            current[0] = 'other'
        return hook

    for i, blk in enumerate(blocks_of(model)):
        hooks.append(blk.register_forward_pre_hook(enter(i)))
        hooks.append(blk.register_forward_hook(leave(i)))

    def pack(t):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in seen:
            seen.add(key)
            saved[current[0]] = saved.get(current[0], 0) + storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs = model(x)
    for h in hooks:
        h.remove()
    del outs
    return saved, grad_flags


def peak_allocated_bytes(model, x):
    """Peak of live CPU-allocator bytes during one forward+backward (``torch.profiler``).

    The profiler records every allocation and free (``profile_memory=True``); summing them
    in time order gives the bytes live at each moment beyond those live before the step.
    """
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(model, x)
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == '[memory]'), key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def run(args):
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(2))
    result = dict(benchmark='train_step', arch=args.arch, size=args.size, batch=args.batch,
                  r=args.r, start_lora_idx=args.start, svd_init=args.svd_init, variants={})
    models = {}
    for variant in ('soma', 'lora'):
        t = time.perf_counter()
        model = build(variant, args)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f'[bench] {variant}: built in {time.perf_counter() - t:.0f} s, '
              f'{trainable:,} trainable', flush=True)
        warm = [step(model, x) for _ in range(args.warmup)]
        models[variant] = model
        result['variants'][variant] = dict(trainable_params=trainable, warmup_s=warm, step_s=[])
    for i in range(args.iters):
        for variant, model in models.items():
            seconds = step(model, x)
            result['variants'][variant]['step_s'].append(seconds)
            print(f'[bench] step {i + 1}/{args.iters} {variant}: {seconds:.2f} s', flush=True)
    for entry in result['variants'].values():
        entry['median_s'] = statistics.median(entry['step_s'])
        entry['min_s'] = min(entry['step_s'])
    soma, lora = result['variants']['soma'], result['variants']['lora']
    result['ratio_soma_over_lora_median'] = soma['median_s'] / lora['median_s']
    result['ratio_soma_over_lora_min'] = soma['min_s'] / lora['min_s']
    result['paired_ratios'] = [a / b for a, b in zip(soma['step_s'], lora['step_s'])]
    result['ratio_soma_over_lora_paired_median'] = statistics.median(result['paired_ratios'])

    models['full'] = build('full', args)
    memory = {}
    for variant, model in models.items():
        saved, flags = saved_activation_bytes(model, x)
        frozen = [i for i in range(args.start) if i in flags]
        memory[variant] = dict(
            saved_for_backward_mb_total=sum(saved.values()) / 2 ** 20,
            saved_for_backward_mb_per_block={str(k): v / 2 ** 20 for k, v in saved.items()},
            frozen_blocks_saved_mb=sum(saved.get(i, 0) for i in frozen) / 2 ** 20,
            frozen_blocks_output_requires_grad=any(flags[i] for i in frozen))
        print(f'[bench] {variant}: {memory[variant]["saved_for_backward_mb_total"]:.0f} MB saved '
              f'for backward, {memory[variant]["frozen_blocks_saved_mb"]:.0f} MB of it in blocks '
              f'0..{args.start - 1}', flush=True)
    if not args.no_peak:
        for variant, model in models.items():
            peak = peak_allocated_bytes(model, x)
            memory[variant]['peak_allocated_mb'] = peak / 2 ** 20
            print(f'[bench] {variant}: peak {peak / 2 ** 20:.0f} MB allocated during a step',
                  flush=True)
    result['activation_memory'] = memory
    del models
    result.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                  cpu_count=os.cpu_count(), machine=platform.machine(),
                  load_avg=os.getloadavg())
    return result


def main(argv=None):
    args = parse_args(argv)
    result = run(args)
    from soma.utils.atomic import atomic_output
    with atomic_output(args.out) as tmp:
        with open(tmp, 'w') as f:
            json.dump(result, f, indent=1)
    print(f'soma/lora step time: x{result["ratio_soma_over_lora_paired_median"]:.3f} '
          f'(median of paired steps), x{result["ratio_soma_over_lora_min"]:.3f} (fastest steps)')
    print(f'written {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
