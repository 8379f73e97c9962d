"""onnxruntime vs PyTorch eager on the CPU: SoMA + Mask2Former at 512 x 512, ViT-S and ViT-B.

    python benchmarks/bench_onnx.py [--archs vit-s vit-b] [--size 512] [--repeat 3]
        [--threads 2] [--out work_dirs/benchmarks/onnx.json] [--docs docs/benchmarks.md]

For each backbone, ``configs/soma/soma_dinov2-L_mask2former.py`` with a ViT-S or ViT-B
DINOv2 (12 blocks, maps after blocks 3, 5, 7, 11, SoMA r=16 on blocks 4..11) and the released
Mask2Former head, random weights (the SoMA SVD runs on them: the timings do not depend on
the values), is exported by ``soma.deploy`` (512 x 512, batch 1, checked against PyTorch)
and timed in one process, round-robin, on the same random image (normalisation + network,
batch 1, no sliding window):

* ``torch unmerged``: the SoMA layers as trained (``x W^T + s (x A^T) B^T``);
* ``torch merged``: the adapters folded into plain layers (what is exported);
* ``onnxruntime``: the exported file, CPU execution provider.

Memory: each variant runs again in a fresh process that loads it (the PyTorch graph
modules pickled by this run, or the ONNX file), runs a warm-up and one timed forward: RSS
after loading, peak RSS (``VmHWM``) and the growth during inference (peak minus loaded).
The onnxruntime process imports onnxruntime and numpy only (a deployment box). The load
average before and after is recorded. The json goes to ``--out``; with ``--docs`` the table
replaces the section between ``<!-- bench-onnx:begin -->`` and ``<!-- bench-onnx:end -->``.
"""
import argparse
import json
import os
import os.path as osp
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
CONFIG = 'configs/soma/soma_dinov2-L_mask2former.py'
ARCHS = {'vit-s': dict(embed_dim=384, num_heads=6), 'vit-b': dict(embed_dim=768, num_heads=12)}
VARIANTS = ('torch unmerged', 'torch merged', 'onnxruntime')
BEGIN, END = '<!-- bench-onnx:begin -->', '<!-- bench-onnx:end -->'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--archs', nargs='+', default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument('--size', type=int, default=512)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--out', default='work_dirs/benchmarks/onnx.json')
    parser.add_argument('--docs', default=None, help='markdown file whose section is replaced')
    # internal: one variant in a fresh process, for its peak memory
    parser.add_argument('--child', choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument('--onnx', help=argparse.SUPPRESS)
    parser.add_argument('--module', help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def cfg_options(arch, size):
    """A 12-block ViT-S/B DINOv2 with SoMA in the ViT-L Mask2Former config."""
    dims = ARCHS[arch]
    return {'model.backbone.embed_dim': dims['embed_dim'], 'model.backbone.depth': 12,
            'model.backbone.num_heads': dims['num_heads'], 'model.backbone.img_size': size,
            'model.backbone.out_indices': [3, 5, 7, 11],
            'model.backbone.lora_cfg.start_lora_idx': 4,
            'model.decode_head.in_channels': [dims['embed_dim']] * 4}


def build(arch, size, seed=0):
    """The SoMA model of ``arch`` with random weights (eval, CPU)."""
    import torch

    from soma.apis.inference import init_model
    torch.manual_seed(seed)
    return init_model(osp.join(REPO, CONFIG), cfg_options=cfg_options(arch, size))


def image(size, seed=0):
    import numpy as np
    return (np.random.RandomState(seed).rand(1, 3, size, size) * 255).astype('float32')


def _status_mb(key):
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, MB. (``ru_maxrss`` would carry the
    parent's peak over ``fork`` + ``exec``; ``VmHWM`` belongs to the new address space.)"""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1]) / 1024
    return float('nan')


def _rss_mb():
    return _status_mb('VmRSS')


def _peak_mb():
    return _status_mb('VmHWM')


def torch_graphs(arch, size, threads, variants=VARIANTS[:2]):
    """``{variant: graph}`` for the PyTorch variants asked for, and the model."""
    import torch

    from soma.deploy.export import build_graph
    from soma.deploy.graphs import SegmentorGraph
    torch.set_num_threads(threads)
    model = build(arch, size)
    graphs = {}
    if 'torch unmerged' in variants:
        graphs['torch unmerged'] = SegmentorGraph(model, (size, size)).eval()
    if 'torch merged' in variants:
        graphs['torch merged'] = build_graph(model, (size, size))
    return graphs, model


def torch_fn(graph):
    import torch

    def run(x):
        with torch.inference_mode():
            return graph(torch.from_numpy(x)).numpy()
    return run


def ort_fn(path, threads):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    return lambda x: session.run(['logits'], {'image': x})[0]


def child(args):
    """One variant in this (fresh) process: RSS after loading, peak RSS, one timed run."""
    x = image(args.size)
    if args.child == 'onnxruntime':  # a deployment box: onnxruntime + numpy, no torch
        fn = ort_fn(args.onnx, args.threads)
    else:  # the graph module pickled by the parent (this benchmark's own file)
        import torch

        import soma  # noqa: F401  (the classes of the pickled modules)
        torch.set_num_threads(args.threads)
        fn = torch_fn(torch.load(args.module, weights_only=False))
    loaded = _rss_mb()
    fn(x)
    start = time.perf_counter()
    fn(x)
    seconds = time.perf_counter() - start
    print(json.dumps(dict(rss_loaded_mb=loaded, peak_rss_mb=_peak_mb(),
                          inference_mb=_peak_mb() - loaded, seconds=seconds,
                          torch_imported='torch' in sys.modules)))
    return 0


def memory(arch, variant, args, onnx_path, module_path=None):
    cmd = [sys.executable, osp.abspath(__file__), '--child', variant, '--archs', arch,
           '--size', str(args.size), '--threads', str(args.threads), '--onnx', onnx_path]
    cmd += ['--module', module_path] if module_path else []
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=3600)
    if res.returncode != 0:
        return dict(error=(res.stderr.strip().splitlines() or ['?'])[-1])
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_arch(arch, args):
    import numpy as np
    import torch

    from soma.deploy.export import export_model
    graphs, model = torch_graphs(arch, args.size, args.threads)
    folder = tempfile.mkdtemp(prefix='bench_onnx_')
    onnx_path = osp.join(folder, f'{arch}.onnx')
    report = export_model(model, onnx_path, (args.size, args.size))
    modules = {}
    for name, graph in graphs.items():  # for the memory of each variant in a fresh process
        modules[name] = osp.join(folder, name.replace(' ', '_') + '.pt')
        torch.save(graph, modules[name])
    fns = {name: torch_fn(graph) for name, graph in graphs.items()}
    fns['onnxruntime'] = ort_fn(onnx_path, args.threads)
    x = image(args.size)
    outputs = {name: fn(x) for name, fn in fns.items()}  # warm-up
    ref = outputs['torch unmerged']
    times = {name: [] for name in fns}
    for _ in range(args.repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - start)
    result = dict(export_check=report['check'], onnx_mb=osp.getsize(onnx_path) / 2**20,
                  max_abs_logit_diff={name: float(np.abs(out - ref).max())
                                      for name, out in outputs.items()},
                  label_agreement={name: float((out.argmax(1) == ref.argmax(1)).mean())
                                   for name, out in outputs.items()},
                  seconds=times)
    base = statistics.median(times['torch unmerged'])
    result['median_s'] = {name: statistics.median(t) for name, t in times.items()}
    result['speedup_vs_unmerged'] = {name: base / statistics.median(t)
                                     for name, t in times.items()}
    result['memory'] = {name: memory(arch, name, args, onnx_path, modules.get(name))
                        for name in fns}
    return result


def table(result):
    rows = ['| backbone | variant | median s | x unmerged | RSS loaded MB | peak RSS MB | '
            'inference MB |', '|---|---|---|---|---|---|---|']
    for arch, r in result['archs'].items():
        for name in VARIANTS:
            mem = r['memory'][name]
            rows.append(f'| {arch} | {name} | {r["median_s"][name]:.2f} | '
                        f'{r["speedup_vs_unmerged"][name]:.2f} | '
                        f'{mem.get("rss_loaded_mb", float("nan")):.0f} | '
                        f'{mem.get("peak_rss_mb", float("nan")):.0f} | '
                        f'{mem.get("inference_mb", float("nan")):.0f} |')
    return '\n'.join(rows)


def write_docs(path, result):
    text = open(path).read()
    archs = result['archs']
    body = '\n'.join([
        BEGIN,
        '## ONNX export: onnxruntime vs PyTorch eager, CPU, 512x512, batch 1',
        '`benchmarks/bench_onnx.py` — ViT-S / ViT-B DINOv2 (12 blocks) + SoMA (r=16, blocks '
        '4-11) + the released Mask2Former head, random weights (timings do not depend on '
        f'them), {result["threads"]} threads each, {result["repeat"]} round-robin repeats '
        'after a warm-up in one process (median). Memory: each variant again in a fresh '
        'process that loads it (the PyTorch modules pickled by the run, or the ONNX file): '
        'RSS after loading, peak RSS, "inference MB" = peak minus loaded; the onnxruntime '
        'process imports onnxruntime and numpy only, the PyTorch ones torch, mmseg, mmdet.',
        '',
        table(result),
        '',
        'ONNX file: ' + ', '.join(f'{a} {r["onnx_mb"]:.0f} MB' for a, r in archs.items())
        + '. Largest logit difference to the unmerged model: ' + ', '.join(
            f'{a} merged {r["max_abs_logit_diff"]["torch merged"]:.1e}, onnxruntime '
            f'{r["max_abs_logit_diff"]["onnxruntime"]:.1e}' for a, r in archs.items())
        + '; labels equal: ' + ', '.join(
            f'{a} {100 * r["label_agreement"]["onnxruntime"]:.2f} %' for a, r in archs.items())
        + '.',
        f'Machine: {result["machine"]}; load average {result["load_before"]} before, '
        f'{result["load_after"]} after (shared with other jobs: seconds are noisy, the ratios '
        'are from the same run).',
        END])
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + body + text[text.index(END) + len(END):]
    else:
        text = text.rstrip('\n') + '\n\n' + body + '\n'
    with open(path, 'w') as f:
        f.write(text)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child(args)
    import torch
    result = dict(size=args.size, repeat=args.repeat, threads=args.threads,
                  torch=torch.__version__, machine=f'{os.cpu_count()} CPU cores '
                  f'({platform.machine()}), no GPU', load_before=[round(v, 2) for v in os.getloadavg()],
                  archs={})
    for arch in args.archs:
        print(f'[bench_onnx] {arch}: export, then {args.repeat} round-robin repeats',
              flush=True)
        result['archs'][arch] = bench_arch(arch, args)
        print(json.dumps(result['archs'][arch]['median_s']), flush=True)
    result['load_after'] = [round(v, 2) for v in os.getloadavg()]
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=2)
    print(table(result))
    if args.docs:
        write_docs(args.docs, result)
    return 0


if __name__ == '__main__':
    sys.exit(main())
