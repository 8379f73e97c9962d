"""Every CUDA figure of the project in one command (under 8 minutes on one H100/H200).

    python benchmarks/gpu_suite.py [--out work_dirs/benchmarks/gpu_suite.json]
        [--docs docs/benchmarks.md] [--sections msda roi_align ...] [--cpu-tiny]

Sections (each one's failure is recorded in the json and the table, the others still run):

* ``msda``: mmcv ``MultiScaleDeformableAttnFunction`` (CUDA kernel) vs mmcv's
  ``multi_scale_deformable_attn_pytorch`` in float64: forward and backward (value, sampling
  locations, attention weights) max errors, times; whether the kernel takes bfloat16;
* ``roi_align``: mmcv ``roi_align`` (aligned, avg) vs a pure-torch bilinear reference
  written here, forward and input gradient;
* ``attention``: xFormers memory-efficient attention vs SDPA in the DINOv2 ``Attention``
  (ViT-L: 1025 tokens, 16 heads), equality and time;
* ``train_step``: ViT-L SoMA + Mask2Former (``configs/soma/soma_dinov2-L_mask2former.py``)
  ``train_step`` at 512 and 1024 crops, fp32 and ``--amp`` (the dtype
  :func:`soma.apis.launch.amp_dtype` picks, and forced bfloat16): s/iter and peak
  ``torch.cuda.max_memory_allocated``;
* ``codetr_step``: SoMA + Co-DETR (``DGOD/configs/soma/soma_dinov2-L_codetr_dg.py``) at 1024;
* ``soma_init``: the SVD initialisation of ViT-L's 96 adapted layers on the GPU, with the
  error against a float64 exact SVD on a few layers;
* ``eval_windows``: one 1024 x 2048 image, sequential vs batched windows;
* ``merged``: unmerged vs merged vs plain backbone inference (``tools/benchmark.py``, ViT-L +
  Semantic FPN, 512, batch 4);
* ``onnx``: ViT-L SoMA + Mask2Former exported by ``soma.deploy`` (512, batch 1; exported from a
  CPU copy) and run by onnxruntime's TensorRT / CUDA execution providers, when the installed
  onnxruntime has them (``onnxruntime-gpu``; skipped otherwise, with the reason), against the
  merged PyTorch model on the GPU: latency, peak GPU memory of PyTorch, max logit difference.

``--cpu-tiny``: the same code paths with tiny models and sizes on the CPU (a test runs it so
the script cannot rot; its figures mean nothing). The json goes to ``--out``; the table
replaces the section between ``<!-- gpu-suite:begin -->`` and ``<!-- gpu-suite:end -->`` of
``--docs`` (default ``docs/benchmarks.md``, not touched in ``--cpu-tiny`` mode unless given).
"""
import argparse
import copy
import gc
import json
import os
import os.path as osp
import platform
import statistics
import sys
import tempfile
import time
import traceback

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
BEGIN, END = '<!-- gpu-suite:begin -->', '<!-- gpu-suite:end -->'
SECTIONS = ('msda', 'roi_align', 'attention', 'train_step', 'codetr_step', 'soma_init',
            'eval_windows', 'merged', 'onnx')
SEG_CONFIG = 'configs/soma/soma_dinov2-L_mask2former.py'
FPN_CONFIG = 'configs/soma/soma_dinov2-L_semfpn.py'  # tools/benchmark.py: head without samples
DET_CONFIG = 'DGOD/configs/soma/soma_dinov2-L_codetr_dg.py'
DET_TINY_CONFIG = 'DGOD/configs/demo/soma_tiny_codetr_demo.py'
# tiny stand-ins for --cpu-tiny: a 2-block DINOv2 and a small Mask2Former
TINY_SEG = {
    'model.backbone': dict(img_size=64, embed_dim=64, depth=2, num_heads=2,
                           out_indices=[0, 1, 1, 1], lora_cfg=dict(r=4, start_lora_idx=1)),
    'model.decode_head': dict(
        in_channels=[64] * 4, feat_channels=32, out_channels=32, num_queries=6,
        pixel_decoder=dict(encoder=dict(num_layers=1, layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=32, num_heads=2, num_points=2),
            ffn_cfg=dict(embed_dims=32, feedforward_channels=64))),
            norm_cfg=dict(num_groups=8), positional_encoding=dict(num_feats=16)),
        positional_encoding=dict(num_feats=16),
        transformer_decoder=dict(num_layers=2, layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=32, num_heads=2),
            cross_attn_cfg=dict(embed_dims=32, num_heads=2),
            ffn_cfg=dict(embed_dims=32, feedforward_channels=64))),
        train_cfg=dict(num_points=256)),
    'model.test_cfg': dict(crop_size=(64, 64), stride=(43, 43)),
    'model.data_preprocessor.size': (64, 64),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='work_dirs/benchmarks/gpu_suite.json')
    parser.add_argument('--docs', default=None,
                        help='markdown file whose gpu-suite section is replaced (default '
                             'docs/benchmarks.md; in --cpu-tiny mode only when given)')
    parser.add_argument('--sections', nargs='+', default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument('--cpu-tiny', action='store_true', help='tiny sizes on the CPU')
    parser.add_argument('--iters', type=int, default=3, help='timed train iterations')
    return parser.parse_args(argv)


# ---------------------------------------------------------------------- helpers
class Ctx:
    def __init__(self, tiny):
        self.tiny = tiny
        self.device = 'cpu' if tiny else 'cuda'
        if not tiny and not torch.cuda.is_available():
            raise SystemExit('error: gpu_suite needs a CUDA GPU (or --cpu-tiny)')

    def sync(self):
        if self.device == 'cuda':
            torch.cuda.synchronize()

    def timed(self, fn, repeat=3, warmup=1):
        """``(median seconds, last result)`` of ``fn()``."""
        for _ in range(warmup):
            result = fn()
        times = []
        for _ in range(repeat):
            self.sync()
            start = time.perf_counter()
            result = fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times), result

    def reset_peak(self):
        gc.collect()
        if self.device == 'cuda':
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_mb(self):
        return torch.cuda.max_memory_allocated() / 2**20 if self.device == 'cuda' else None


def _max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


# ---------------------------------------------------------------------- mmcv ops
def section_msda(ctx):
    from mmcv.ops.multi_scale_deform_attn import (MultiScaleDeformableAttnFunction,
                                                  multi_scale_deformable_attn_pytorch)
    g = torch.Generator().manual_seed(0)
    # Mask2Former's pixel decoder at 1024: 3 levels (1/8, 1/16, 1/32), 8 heads x 32
    shapes = [(16, 16), (8, 8), (4, 4)] if ctx.tiny else [(128, 128), (64, 64), (32, 32)]
    bs, heads, dims, points = (1, 2, 8, 2) if ctx.tiny else (2, 8, 32, 4)
    num_value = sum(h * w for h, w in shapes)
    num_query = num_value
    dev = ctx.device
    spatial = torch.tensor(shapes, device=dev)
    start = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    value = torch.randn(bs, num_value, heads, dims, generator=g).to(dev)
    loc = torch.rand(bs, num_query, heads, len(shapes), points, 2, generator=g).to(dev)
    weight = torch.rand(bs, num_query, heads, len(shapes), points, generator=g).to(dev)
    weight = weight / weight.sum((-1, -2), keepdim=True)
    grad_out = torch.randn(bs, num_query, heads * dims, generator=g).to(dev)

    def run(fn, dtype=torch.float32):
        xs = [t.detach().to(dtype).clone().requires_grad_() for t in (value, loc, weight)]
        out = fn(*xs)
        out.backward(grad_out.to(dtype))
        return out, [x.grad for x in xs]

    ref = lambda v, l, w: multi_scale_deformable_attn_pytorch(v, spatial, l, w)  # noqa: E731
    if dev == 'cuda':
        op = lambda v, l, w: MultiScaleDeformableAttnFunction.apply(  # noqa: E731
            v, spatial, start, l, w, 64)
        op_name = 'mmcv CUDA kernel'
    else:
        op, op_name = ref, 'pytorch (mmcv has no CPU kernel)'
    out64, grads64 = run(ref, torch.float64)
    out, grads = run(op)
    t_op, _ = ctx.timed(lambda: run(op))
    t_ref, _ = ctx.timed(lambda: run(ref))
    try:
        run(op, torch.bfloat16)
        bf16 = True
    except RuntimeError as e:
        bf16 = f'no: {str(e).splitlines()[0][:80]}'
    return dict(op=op_name, forward_max_err=_max_err(out, out64),
                grad_max_err={n: _max_err(a, b) for n, a, b in
                              zip(('value', 'sampling_locations', 'attention_weights'),
                                  grads, grads64)},
                op_fwd_bwd_s=t_op, pytorch_fwd_bwd_s=t_ref, speedup=t_ref / t_op,
                takes_bfloat16=bf16, shapes=shapes)


def roi_align_reference(feat, rois, out_size, scale, ratio):
    """Pure-torch RoIAlign (aligned=True, avg): ``ratio x ratio`` bilinear samples per bin,
    zero outside ``[-1, H] x [-1, W]``, clamped to the border inside (mmcv's rule)."""
    n, c, height, width = feat.shape
    ph, pw = out_size
    outs = []
    for roi in rois:
        b = int(roi[0])
        x1, y1, x2, y2 = (roi[1:] * scale - 0.5).tolist()
        bin_h, bin_w = (y2 - y1) / ph, (x2 - x1) / pw
        steps = (torch.arange(ratio, dtype=feat.dtype, device=feat.device) + 0.5) / ratio
        ys = y1 + (torch.arange(ph, device=feat.device)[:, None] + steps) * bin_h  # ph x r
        xs = x1 + (torch.arange(pw, device=feat.device)[:, None] + steps) * bin_w  # pw x r
        y = ys.reshape(-1)[:, None].expand(-1, xs.numel())
        x = xs.reshape(-1)[None, :].expand(ys.numel(), -1)
        valid = (y >= -1) & (y <= height) & (x >= -1) & (x <= width)
        y, x = y.clamp(min=0), x.clamp(min=0)
        y0, x0 = y.floor().long(), x.floor().long()
        top_y, top_x = y0 >= height - 1, x0 >= width - 1
        y0, x0 = y0.clamp(max=height - 1), x0.clamp(max=width - 1)
        y = torch.where(top_y, y0.to(y.dtype), y)
        x = torch.where(top_x, x0.to(x.dtype), x)
        y1i, x1i = (y0 + 1).clamp(max=height - 1), (x0 + 1).clamp(max=width - 1)
        ly, lx = y - y0, x - x0
        f = feat[b]
        val = ((1 - ly) * (1 - lx) * f[:, y0, x0] + (1 - ly) * lx * f[:, y0, x1i]
               + ly * (1 - lx) * f[:, y1i, x0] + ly * lx * f[:, y1i, x1i]) * valid
        outs.append(val.reshape(c, ph, ratio, pw, ratio).mean((2, 4)))
    return torch.stack(outs)


def section_roi_align(ctx):
    from mmcv.ops import roi_align
    g = torch.Generator().manual_seed(0)
    c, size, num = (4, 16, 8) if ctx.tiny else (256, 64, 512)
    feat = torch.randn(2, c, size, size, generator=g)
    xy = torch.rand(num, 2, generator=g) * size * 4 * 1.1 - 4  # some past the borders
    wh = torch.rand(num, 2, generator=g) * size * 2 + 1
    rois = torch.cat([torch.randint(0, 2, (num, 1), generator=g).float(), xy, xy + wh], 1)
    grad = torch.randn(num, c, 7, 7, generator=g)
    dev = ctx.device

    def run(fn, dtype):
        x = feat.to(dev, dtype).clone().requires_grad_()  # a fresh leaf: no grad carried
        out = fn(x, rois.to(dev, dtype))
        out.backward(grad.to(dev, dtype))
        return out, x.grad

    op = lambda x, r: roi_align(x, r.contiguous(), (7, 7), 0.25, 2, 'avg', True)  # noqa: E731
    ref = lambda x, r: roi_align_reference(x, r, (7, 7), 0.25, 2)  # noqa: E731
    out64, grad64 = run(ref, torch.float64)
    out, grad_in = run(op, torch.float32)
    t_op, _ = ctx.timed(lambda: run(op, torch.float32))
    return dict(forward_max_err=_max_err(out, out64), grad_max_err=_max_err(grad_in, grad64),
                op_fwd_bwd_s=t_op, rois=num, channels=c)


# ---------------------------------------------------------------------- attention
def section_attention(ctx):
    from soma.models.backbones.dinov2 import Attention, _xformers_ops
    dim, heads, tokens, bs = (64, 2, 65, 2) if ctx.tiny else (1024, 16, 1025, 4)
    attn = Attention(dim, heads).to(ctx.device).eval()
    x = torch.randn(bs, tokens, dim, generator=torch.Generator().manual_seed(0)).to(ctx.device)
    other = 'xformers' if ctx.device == 'cuda' and _xformers_ops() is not None else None
    impls = ['sdpa', other or 'naive']
    result = dict(compared=impls, xformers_installed=_xformers_ops() is not None)
    outs = {}
    for dtype in (torch.float32, torch.bfloat16) if ctx.device == 'cuda' else (torch.float32,):
        for impl in impls:
            attn.attn_impl = impl
            with torch.inference_mode(), torch.autocast(ctx.device, dtype=dtype,
                                                         enabled=dtype != torch.float32):
                seconds, out = ctx.timed(lambda: attn(x), repeat=10)
            outs[impl] = out.float()
            result[f'{impl}_{str(dtype)[6:]}_s'] = seconds
        result[f'max_abs_diff_{str(dtype)[6:]}'] = _max_err(outs[impls[0]], outs[impls[1]])
    return result


# ---------------------------------------------------------------------- training steps
def _seg_cfg_options(ctx, crop):
    if ctx.tiny:
        opts = copy.deepcopy(TINY_SEG)
        crop = 64 if crop == 512 else 96
        opts['model.backbone']['img_size'] = crop
        opts['model.data_preprocessor.size'] = (crop, crop)
        return opts, crop
    return {'model.backbone.img_size': crop, 'model.data_preprocessor.size': (crop, crop),
            'model.test_cfg.crop_size': (crop, crop)}, crop


def _build_for_training(config, ctx, cfg_options):
    """The config's model (random weights, SVD done) on the device, and the config."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG

    import soma  # noqa: F401
    cfg = Config.fromfile(osp.join(REPO, config))
    cfg.merge_from_dict(cfg_options or {})
    init_default_scope(cfg.default_scope)
    cfg.model.backbone.init_cfg = None
    model = (DET if cfg.default_scope == 'mmdet' else SEG).build(cfg.model)
    model.init_weights()
    return model.to(ctx.device).train(), cfg


def _optim_wrapper(model, cfg, ctx, amp):
    """The config's optimizer wrapper: fp32 (``amp=None``), ``--amp`` ('auto') or a forced
    autocast dtype; with the dtype name."""
    from mmengine.optim import build_optim_wrapper

    from soma.apis.launch import enable_amp
    cfg = copy.deepcopy(cfg)
    dtype = 'float32'
    if amp == 'auto':
        dtype = enable_amp(cfg, ctx.device)
    elif amp:
        cfg.optim_wrapper.update(type='AmpOptimWrapper' if ctx.device == 'cuda'
                                 else 'AutocastOptimWrapper', dtype=amp)
        dtype = amp
    return build_optim_wrapper(model, cfg.optim_wrapper), dtype


def _seg_batch(size, seed=0):
    sys.path.insert(0, osp.join(REPO, 'benchmarks'))
    from bench_seg_train_iter import random_batch
    return random_batch(size, 1, seed)


def _det_batch(size, seed=0):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)
    xy = torch.rand(5, 2, generator=g) * size * 0.6
    boxes = torch.cat([xy, xy + torch.rand(5, 2, generator=g) * size * 0.3 + 8], 1)
    sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                         pad_shape=(size, size), scale_factor=(1.0, 1.0),
                                         batch_input_shape=(size, size)))
    sample.gt_instances = InstanceData(bboxes=boxes, labels=torch.randint(0, 7, (5,),
                                                                          generator=g))
    return dict(inputs=[image], data_samples=[sample])


def _time_train(ctx, model, optim_wrapper, data, iters):
    ctx.reset_peak()
    seconds, logs = ctx.timed(lambda: model.train_step(copy.deepcopy(data), optim_wrapper),
                              repeat=iters, warmup=1)
    loss = sum(v.item() for k, v in logs.items() if 'loss' in k)
    return dict(s_per_iter=seconds, peak_mem_mb=ctx.peak_mb(), loss=loss)


def _train_modes(ctx, config, opts, data, amps, iters):
    model, cfg = _build_for_training(config, ctx, opts)
    result = {}
    for amp in amps:
        try:
            ow, dtype = _optim_wrapper(model, cfg, ctx, amp)
            result[amp or 'fp32'] = dict(dtype=dtype, **_time_train(ctx, model, ow, data, iters))
        except Exception as e:  # noqa: BLE001  (recorded, the suite goes on)
            result[amp or 'fp32'] = dict(error=f'{type(e).__name__}: '
                                               f'{str(e).splitlines()[0][:160]}')
        ow = None
        ctx.reset_peak()
    return result


def section_train_step(ctx, iters):
    """One model per crop; fp32, ``--amp`` and (GPU) forced bfloat16 optimizer wrappers."""
    amps = [None, 'auto'] + (['bfloat16'] if ctx.device == 'cuda' else [])
    result = {}
    for crop in (512, 1024):
        opts, size = _seg_cfg_options(ctx, crop)
        for mode, entry in _train_modes(ctx, SEG_CONFIG, opts, _seg_batch(size), amps,
                                        iters).items():
            result[f'{crop}_{mode}'] = entry
        ctx.reset_peak()
    return result


def section_codetr_step(ctx, iters):
    config, size = (DET_TINY_CONFIG, 64) if ctx.tiny else (DET_CONFIG, 1024)
    amps = [None] + ([] if ctx.tiny else ['auto'])  # (CPU --amp: refused for detection)
    result = _train_modes(ctx, config, {}, _det_batch(size), amps, iters)
    return {k: dict(v, size=size) for k, v in result.items()}


# ---------------------------------------------------------------------- inference
def section_soma_init(ctx):
    from soma.models.backbones.dinov2 import DinoVisionTransformer
    from soma.peft import SoMAModel
    from soma.peft.svd import exact_svd_components
    arch = dict(embed_dim=64, depth=4, num_heads=2, out_indices=[0, 1, 2, 3]) if ctx.tiny \
        else dict(embed_dim=1024, depth=24, num_heads=16)
    vit = DinoVisionTransformer(img_size=64 if ctx.tiny else 512, patch_size=16, **arch)
    vit = vit.to(ctx.device)
    start_idx = 2 if ctx.tiny else 8
    soma_model = SoMAModel(dict(type='sora', r=4 if ctx.tiny else 16, lora_alpha=16,
                                target_modules=['q', 'k', 'v', 'proj', 'fc1', 'fc2'],
                                start_lora_idx=start_idx), vit, init_adapters=False)
    layers = soma_model.adapted_layers()
    weights = {n: m.weight.detach().clone() for n, m in layers.items()}
    ctx.sync()
    start = time.perf_counter()
    soma_model.init_adapters()
    ctx.sync()
    seconds = time.perf_counter() - start
    errors = []
    for name in list(layers)[::max(1, len(layers) // 6)]:
        layer = layers[name]
        u, s, vh = exact_svd_components(weights[name], layer.r, layer.first_eigen)
        ref = (u * s) @ vh
        ba = (layer.lora_B.weight.double() @ layer.lora_A.weight.double()) * layer.scaling
        errors.append(((ba - ref).norm() / ref.norm()).item())
    return dict(layers=len(layers), seconds=seconds, max_rel_err_BA=max(errors),
                checked_layers=len(errors))


def section_eval_windows(ctx):
    from bench_slide_inference import build_model, compare_slide
    if ctx.tiny:
        opts, _ = _seg_cfg_options(ctx, 512)
        model = build_model(SEG_CONFIG, ctx.device, opts)
        return compare_slide(model, 101, 203, 8)
    model = build_model(SEG_CONFIG, ctx.device)
    result = {}
    for batch_size in (4, 8, 18):
        ctx.reset_peak()
        entry = compare_slide(model, 1024, 2048, batch_size)
        entry['peak_mem_mb'] = ctx.peak_mb()
        result[f'slide_batch_size_{batch_size}'] = entry
    return result


def section_merged(ctx):
    from bench_slide_inference import build_model

    from soma.apis.benchmark import benchmark
    opts = {'model.backbone': TINY_SEG['model.backbone'],
            'model.neck.in_channels': [64] * 4} if ctx.tiny else None
    size = 64 if ctx.tiny else 512
    model = build_model(FPN_CONFIG, ctx.device, opts)
    res = benchmark(model, shape=(size, size), batch=1 if ctx.tiny else 4,
                    repeat=3 if ctx.tiny else 10, warmup=1 if ctx.tiny else 3)
    keep = ('fps', 'ratio_merged_vs_plain', 'ratio_unmerged_vs_plain', 'max_abs_diff')
    return {k: v for k, v in res.items() if k in keep or k.startswith('ratio')}


def section_onnx(ctx):
    import onnxruntime as ort

    from soma.apis.inference import init_model
    from soma.deploy.export import build_graph, export_model
    opts, size = _seg_cfg_options(ctx, 512)
    model = init_model(osp.join(REPO, SEG_CONFIG), cfg_options=opts)  # random, CPU
    path = osp.join(tempfile.mkdtemp(prefix='gpu_suite_onnx_'), 'model.onnx')
    export_s = time.perf_counter()
    export_model(model, path, (size, size))
    out = dict(export_s=time.perf_counter() - export_s, size=size)
    graph = build_graph(model, (size, size)).to(ctx.device)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255
    ctx.reset_peak()
    with torch.inference_mode():
        out['pytorch_merged_s'], ref = ctx.timed(lambda: graph(x.to(ctx.device)))
    out['pytorch_peak_mb'] = ctx.peak_mb()
    ref = ref.float().cpu().numpy()
    wanted = ['CPUExecutionProvider'] if ctx.tiny else ['TensorrtExecutionProvider',
                                                       'CUDAExecutionProvider']
    available = ort.get_available_providers()
    providers = [p for p in wanted if p in available]
    if not providers:
        out['skipped'] = (f'onnxruntime {ort.__version__} has no {" / ".join(wanted)} '
                          f'(install onnxruntime-gpu); available: {available}')
        return out
    for provider in providers:
        session = ort.InferenceSession(path, providers=[provider])
        if session.get_providers()[0] != provider:  # e.g. TensorRT libraries missing
            out[provider] = dict(skipped=f'onnxruntime fell back to {session.get_providers()}')
            continue
        seconds, logits = ctx.timed(lambda: session.run(['logits'], {'image': x.numpy()})[0])
        out[provider] = dict(s=seconds, speedup_vs_pytorch=out['pytorch_merged_s'] / seconds,
                             max_abs_diff=float(abs(logits - ref).max()))
    return out


# ---------------------------------------------------------------------- output
def _fmt(value):
    if isinstance(value, float):
        return f'{value:.3g}'
    if isinstance(value, dict):
        return ', '.join(f'{k}={_fmt(v)}' for k, v in value.items())
    return str(value)


def render_table(result):
    lines = [BEGIN, '## GPU suite (`benchmarks/gpu_suite.py`)', '',
             f'Device: {result["device_name"]}, torch {result["torch"]}, '
             f'{result["mode"]} mode, {result["total_s"]:.0f} s in all. '
             'Generated by the script; re-run it to replace this section.', '',
             '| section | figures |', '|---|---|']
    for name, entry in result['sections'].items():
        if isinstance(entry, dict) and entry and all(isinstance(v, dict)
                                                     for v in entry.values()):
            for sub, values in entry.items():
                lines.append(f'| {name} / {sub} | {_fmt(values)} |')
        else:
            lines.append(f'| {name} | {_fmt(entry)} |')
    lines.append(END)
    return '\n'.join(lines)


def write_docs(path, table):
    """Replace the marked gpu-suite section of ``path`` (append it when absent)."""
    from soma.utils.atomic import atomic_output
    text = open(path).read() if osp.isfile(path) else '# Benchmarks\n'
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + table + rest.split(END, 1)[1]
    else:
        text = text.rstrip('\n') + '\n\n' + table + '\n'
    with atomic_output(path) as tmp:
        with open(tmp, 'w') as f:
            f.write(text)


def run(args):
    sys.path.insert(0, osp.join(REPO, 'benchmarks'))
    import soma  # noqa: F401
    ctx = Ctx(args.cpu_tiny)
    torch.manual_seed(0)
    started = time.perf_counter()
    sections = {}
    for name in args.sections:
        t = time.perf_counter()
        fn = globals()[f'section_{name}']
        try:
            takes_iters = name in ('train_step', 'codetr_step')
            sections[name] = fn(ctx, args.iters) if takes_iters else fn(ctx)
        except Exception as e:  # noqa: BLE001  (recorded, the suite goes on)
            traceback.print_exc()
            sections[name] = dict(error=f'{type(e).__name__}: {str(e).splitlines()[0][:160]}')
        ctx.reset_peak()
        print(f'[gpu-suite] {name}: {time.perf_counter() - t:.1f} s', flush=True)
    name = torch.cuda.get_device_name() if ctx.device == 'cuda' else platform.processor() \
        or platform.machine()
    return dict(mode='cpu-tiny' if args.cpu_tiny else 'gpu', device=ctx.device,
                device_name=name, torch=torch.__version__, sections=sections,
                total_s=time.perf_counter() - started, load_avg=os.getloadavg())


def main(argv=None):
    args = parse_args(argv)
    from soma.utils.atomic import atomic_output
    result = run(args)
    with atomic_output(args.out) as tmp:
        with open(tmp, 'w') as f:
            json.dump(result, f, indent=1, default=str)
    docs = args.docs or (None if args.cpu_tiny else osp.join(REPO, 'docs', 'benchmarks.md'))
    if docs:
        write_docs(docs, render_table(result))
    print(render_table(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
