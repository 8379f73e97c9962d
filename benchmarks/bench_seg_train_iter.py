"""Seconds per training iteration: SoMA vs frozen backbone vs full fine-tuning (same run).

    python benchmarks/bench_seg_train_iter.py [--size 512] [--batch 1] [--iters 2]
        [--warmup 1] [--device cpu] [--out work_dirs/benchmarks/seg_train_iter.json]

Each variant is built from its released config (ViT-L + Mask2Former as configured, 512
crop): ``configs/soma/soma_dinov2-L_mask2former.py`` (SoMA), ``frozen_dinov2-L_mask2former.py``
(``FrozenBackboneEncoderDecoder``) and ``fft_dinov2-L_mask2former.py``
(``FrozenNSEncoderDecoder``), with the optimizer wrapper of the config
(``PEFTOptimWrapperConstructor``). No dataset and no pretrained weights are needed: the
backbone is randomly initialised (the SoMA SVD then runs on random weights; timing does not
depend on the values) and a batch of random images and labels (19 classes, some pixels
255) goes through ``model.train_step`` (data preprocessor, forward, losses, backward,
optimizer step). After ``--warmup`` iterations per variant, the ``--iters`` timed
iterations are interleaved across the variants (SoMA, frozen, FFT, SoMA, ...) so that load
changes on a shared machine hit all alike; the mean and min are reported. Writes only the
json given by ``--out``.
"""
import argparse
import gc
import json
import os
import os.path as osp
import platform
import statistics
import sys
import time

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
VARIANTS = {
    'soma': 'configs/soma/soma_dinov2-L_mask2former.py',
    'frozen': 'configs/soma/frozen_dinov2-L_mask2former.py',
    'fft': 'configs/soma/fft_dinov2-L_mask2former.py',
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, default=512, help='square crop size')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--iters', type=int, default=2, help='timed iterations per variant')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument('--out', default='work_dirs/benchmarks/seg_train_iter.json')
    return parser.parse_args(argv)


def build(config, device):
    """Model (random init, SVD done) and optim wrapper of a released config."""
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    cfg = Config.fromfile(osp.join(REPO, config))
    init_default_scope(cfg.default_scope)
    cfg.model.backbone.init_cfg = None  # no pretrained file needed for a timing
    model = MODELS.build(cfg.model)
    model.init_weights()
    model = model.to(device)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model, optim_wrapper, trainable


def random_batch(size, batch, seed=0):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g))
        label = torch.randint(0, 19, (1, size // 32, size // 32), generator=g)
        label = label.repeat_interleave(32, 1).repeat_interleave(32, 2)  # blobs, not noise
        label[:, :size // 16] = 255
        sample = SegDataSample(gt_sem_seg=PixelData(data=label))
        sample.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size),
                                 pad_shape=(size, size)))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def train_iter(model, optim_wrapper, data, device):
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.train_step(data, optim_wrapper)
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(args):
    sys.path.insert(0, REPO)
    import soma  # noqa: F401
    torch.manual_seed(0)
    data = random_batch(args.size, args.batch)
    models, result = {}, dict(variants={})
    for name in args.variants:
        t = time.perf_counter()
        model, ow, trainable = build(VARIANTS[name], args.device)
        model.train()
        print(f'[bench] {name}: built in {time.perf_counter() - t:.0f} s, '
              f'{trainable:,} trainable parameters', flush=True)
        warm = [train_iter(model, ow, data, args.device) for _ in range(args.warmup)]
        print(f'[bench] {name}: warm-up {", ".join(f"{w:.1f}" for w in warm)} s', flush=True)
        models[name] = (model, ow)
        result['variants'][name] = dict(config=VARIANTS[name], trainable_params=trainable,
                                        warmup_s=warm, iter_s=[])
    for i in range(args.iters):
        for name, (model, ow) in models.items():
            seconds = train_iter(model, ow, data, args.device)
            result['variants'][name]['iter_s'].append(seconds)
            print(f'[bench] iter {i + 1}/{args.iters} {name}: {seconds:.2f} s', flush=True)
    for name, entry in result['variants'].items():
        entry['mean_s'] = statistics.mean(entry['iter_s'])
        entry['min_s'] = min(entry['iter_s'])
    base = result['variants'].get('soma', {}).get('mean_s')
    if base:
        for entry in result['variants'].values():
            entry['relative_to_soma'] = entry['mean_s'] / base
    result.update(size=args.size, batch=args.batch, iters=args.iters, warmup=args.warmup,
                  device=args.device, torch=torch.__version__,
                  torch_threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
                  machine=platform.machine(), load_avg=os.getloadavg())
    del models
    gc.collect()
    return result


def main(argv=None):
    args = parse_args(argv)
    result = run(args)
    from soma.utils.atomic import atomic_output
    with atomic_output(args.out) as tmp:
        with open(tmp, 'w') as f:
            json.dump(result, f, indent=1)
    for name, entry in result['variants'].items():
        print(f'{name:>7}: {entry["mean_s"]:.2f} s/iter (min {entry["min_s"]:.2f}), '
              f'{entry["trainable_params"]:,} trainable')
    print(f'written {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
