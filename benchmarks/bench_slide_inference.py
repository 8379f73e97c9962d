"""Sliding-window inference of one image: mmseg's sequential windows vs batched windows.

    python benchmarks/bench_slide_inference.py [--config configs/soma/soma_dinov2-L_mask2former.py]
        [--height 1024] [--width 2048] [--slide-batch-size 8] [--device cpu]
        [--out work_dirs/benchmarks/slide_inference.json]

The model of the config (random weights: the backbone's ``init_cfg`` is dropped; the SoMA
SVD runs on them) predicts one random ``height x width`` image with its ``test_cfg``
(crop 512, stride 341: 3 x 6 = 18 windows for 1024 x 2048) twice in the same run:
``slide_batch_size=None`` (mmseg's ``EncoderDecoder.slide_inference``, one window per
forward) and ``slide_batch_size=N`` (:class:`BatchedSlideEncoderDecoder`). Reports both
times, the speed-up, the largest logit difference and the share of equal labels.
Writes only the json given by ``--out``.
"""
import argparse
import json
import os
import os.path as osp
import platform
import sys
import time

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default='configs/soma/soma_dinov2-L_mask2former.py')
    parser.add_argument('--height', type=int, default=1024)
    parser.add_argument('--width', type=int, default=2048)
    parser.add_argument('--slide-batch-size', type=int, default=8)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--out', default='work_dirs/benchmarks/slide_inference.json')
    return parser.parse_args(argv)


def build_model(config, device, cfg_options=None):
    """The config's segmentor, random weights, eval mode, on ``device``."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import soma  # noqa: F401
    cfg = Config.fromfile(config if osp.isabs(config) else osp.join(REPO, config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.default_scope)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model.to(device).eval()


def _sync(device):
    if str(device).startswith('cuda'):
        torch.cuda.synchronize()


def compare_slide(model, height, width, slide_batch_size, seed=0):
    """Sequential vs batched windows on one random image; a result dict."""
    from mmseg.structures import SegDataSample

    from soma.models.segmentors import slide_windows
    device = next(model.parameters()).device
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(seed))
    meta = dict(ori_shape=(height, width), img_shape=(height, width))
    data = model.data_preprocessor(dict(inputs=[image], data_samples=[SegDataSample(
        metainfo=meta)]), False)
    inputs, samples = data['inputs'], data['data_samples']
    cfg = model.test_cfg
    windows = len(slide_windows(height, width, cfg['crop_size'], cfg['stride']))
    out = {}
    for name, batch_size in (('sequential', None), ('batched', slide_batch_size)):
        cfg['slide_batch_size'] = batch_size
        _sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            logits = model.inference(inputs, [s.metainfo for s in samples])
        _sync(device)
        out[name] = (time.perf_counter() - start, logits.float().cpu())
    seq_s, seq = out['sequential']
    bat_s, bat = out['batched']
    return dict(height=height, width=width, windows=windows,
                crop_size=list(cfg['crop_size']), stride=list(cfg['stride']),
                slide_batch_size=slide_batch_size, sequential_s=seq_s, batched_s=bat_s,
                speedup=seq_s / bat_s, max_abs_logit_diff=(bat - seq).abs().max().item(),
                label_agreement=(bat.argmax(1) == seq.argmax(1)).float().mean().item())


def main(argv=None):
    args = parse_args(argv)
    from soma.utils.atomic import atomic_output
    t = time.perf_counter()
    model = build_model(args.config, args.device)
    print(f'[bench] built {args.config} in {time.perf_counter() - t:.0f} s', flush=True)
    result = compare_slide(model, args.height, args.width, args.slide_batch_size)
    result.update(config=args.config, device=args.device, torch=torch.__version__,
                  torch_threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
                  machine=platform.machine(), load_avg=os.getloadavg())
    with atomic_output(args.out) as tmp:
        with open(tmp, 'w') as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
