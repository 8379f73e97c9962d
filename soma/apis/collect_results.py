"""One table of runs: method, backbone, trainable parameters, per-target and mean metric.

For each work dir (what ``tools/train.py`` / ``tools/test.py`` leave there), the newest run
folder ``<work_dir>/<timestamp>/`` with evaluation scalars is read:

* ``vis_data/scalars.json`` (mmengine's ``LocalVisBackend``, one json object per line): the
  last line with ``<target>_mIoU`` (``DGIoUMetric``) or ``<target>_mAP`` (``DGVOCMetric``,
  prefixed ``pascal_voc/``) keys gives the per-target values, ``mean_*`` the mean (the mean
  of the targets when absent) and ``step`` the iterations;
* ``vis_data/config.py`` (else the config dumped in the work dir): method and backbone;
* ``<timestamp>.log``: the trainable parameter count that ``PEFTOptimWrapperConstructor``
  logs (whole model, heads included; empty when not logged).

The paper's published numbers (SPEC section 9; LoRA / DoRA on Diverse Weather from the
paper's comparison) are put in ``paper_*`` columns where the method and setting match.
:func:`collect_results` writes ``<out>.md``, ``<out>.csv`` and ``<out>.png`` atomically. A
work dir that cannot be read does not stop the others: their table is written, then
:class:`~soma.utils.cli.InputsFailed` names every bad one (one line, exit code 1 in
``tools/collect_results.py``); nothing is written when no work dir can be read.
"""
import argparse
import csv
import glob
import io
import json
import os
import os.path as osp
import re
from typing import Dict, List, Optional, Sequence

from mmengine.config import Config

from soma.checkpoints.layout import PathLike
from soma.utils.atomic import atomic_output
from soma.utils.cli import ArgumentParser, InputsFailed, one_line, run_cli

__all__ = ['PAPER_RESULTS', 'read_run', 'collect_rows', 'format_markdown', 'format_csv',
           'collect_results', 'method_name', 'backbone_name', 'setting_name', 'parse_args',
           'main']

DGOD_TARGETS = ('daytime_clear', 'Night-Sunny', 'dusk_rainy', 'night_rainy', 'daytime_foggy')
# (method, setting) -> {target: value, 'mean': value}; the paper's (SPEC 9 and issue 13)
PAPER_RESULTS = {
    ('SoMA', 'GTAV -> C, B, M (512)'): {'mean': 68.27},
    ('SoMA', 'GTAV + Synthia -> C, B, M (512)'): {'mean': 69.26},
    ('SoMA', 'G + S + U -> C, B, M (512)'): {'mean': 71.68},
    ('SoMA', 'G + S + U -> C, B, M (1024)'): {'mean': 73.12},
    ('SoMA', 'Cityscapes -> B, M (512)'): {'mean': 71.74},
    ('SoMA', 'Diverse Weather'): dict(zip(DGOD_TARGETS, (69.4, 59.3, 59.3, 47.6, 51.0))),
    ('LoRA', 'Diverse Weather'): dict(zip(DGOD_TARGETS, (69.6, 59.6, 58.1, 46.1, 49.5))),
    ('DoRA', 'Diverse Weather'): dict(zip(DGOD_TARGETS, (69.0, 58.7, 58.0, 45.0, 48.9))),
}
_METRIC_RE = re.compile(r'^(?:[\w.-]+/)?(?P<target>.+)_(?P<metric>mIoU|mAP)$')
_TRAINABLE_RE = re.compile(r'([\d,]+) trainable of ([\d,]+) parameters')
_VIT_SIZES = {384: 'S', 768: 'B', 1024: 'L', 1536: 'g'}
_PEFT_INITS = {'pissa': 'PiSSA', 'olora': 'OLoRA', 'mica': 'MiCA', 'gaussian': 'LoRA',
               'orthogonal': 'LoRA'}


# ------------------------------------------------------------------------ reading one run
def _run_dirs(work_dir):
    runs = sorted(d for d in glob.glob(osp.join(work_dir, '*'))
                  if osp.isfile(osp.join(d, 'vis_data', 'scalars.json')))
    if not runs:
        raise ValueError(f'{work_dir}: no <timestamp>/vis_data/scalars.json (not an mmengine '
                         f'work dir, or no run logged yet)')
    return runs


def _eval_rows(path):
    rows = []
    with open(path, encoding='utf-8') as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f'{path}:{lineno}: not json ({exc.msg})') from None
            metrics = {}
            for key, value in row.items():
                match = _METRIC_RE.match(key)
                if match and isinstance(value, (int, float)):
                    metrics[(match['target'], match['metric'])] = float(value)
            if metrics:
                rows.append((row, metrics))
    return rows


def _config_of(work_dir, run_dir):
    dumped = osp.join(run_dir, 'vis_data', 'config.py')
    candidates = [dumped] if osp.isfile(dumped) else sorted(glob.glob(osp.join(work_dir, '*.py')))
    if not candidates:
        raise ValueError(f'{work_dir}: no dumped config ({dumped} or {work_dir}/*.py)')
    try:
        return Config.fromfile(candidates[0])
    except Exception as exc:  # mmengine raises many kinds on a broken file
        raise ValueError(f'{candidates[0]}: cannot read the config ({exc})') from None


def _trainable(run_dir):
    logs = sorted(glob.glob(osp.join(run_dir, '*.log')))
    for log in logs:
        with open(log, encoding='utf-8', errors='replace') as f:
            for line in f:
                match = _TRAINABLE_RE.search(line)
                if match:
                    return int(match.group(1).replace(',', ''))
    return None


def _get(cfg, *path, default=None):
    node = cfg
    for key in path:
        if not hasattr(node, 'get'):
            return default
        node = node.get(key)
        if node is None:
            return default
    return node


def _anneals_weight_decay(cfg):
    schedulers = cfg.get('param_scheduler') or []
    schedulers = schedulers if isinstance(schedulers, (list, tuple)) else [schedulers]
    return any(s.get('param_name') == 'weight_decay' for s in schedulers if hasattr(s, 'get'))


def method_name(cfg: Config) -> str:
    """A short method label from the model config (SoMA variants, peft methods, baselines)."""
    model_type = _get(cfg, 'model', 'type', default='')
    if model_type.startswith('Frozen') and model_type != 'FrozenNSEncoderDecoder':
        return 'frozen backbone'
    if model_type == 'FrozenNSEncoderDecoder':
        return 'full fine-tuning'
    peft_cfg = _get(cfg, 'model', 'backbone', 'peft_cfg')
    if peft_cfg:
        kind = str(peft_cfg.get('type', 'LoraConfig'))
        init = peft_cfg.get('init_lora_weights', True)
        key = init.lower() if isinstance(init, str) else init
        if kind != 'LoraConfig':
            name = kind[:-len('Config')] if kind.endswith('Config') else kind
        else:
            name = _PEFT_INITS.get(key, 'PiSSA' if str(key).startswith('pissa') else 'LoRA')
        if peft_cfg.get('use_dora'):
            name = 'DoRA' if name == 'LoRA' else f'{name}+DoRA'
        if peft_cfg.get('use_rslora'):
            name += ' (rsLoRA)'
        return name
    lora_cfg = _get(cfg, 'model', 'backbone', 'lora_cfg')
    if not lora_cfg:
        return model_type or 'unknown'
    start = lora_cfg.get('start_lora_idx', 8)
    anneal = _anneals_weight_decay(cfg)
    principal = lora_cfg.get('first_eigen', False)
    random = str(lora_cfg.get('lora_weight_init', 'sora')).endswith('_random')
    if not principal and not random and start == 0 and not anneal:
        name, knobs = 'MiLoRA', []
    else:
        name = 'SoMA' + (' principal' if principal else ' random' if random else '')
        knobs = [f'start {start}'] if start != 8 else []
        knobs += [] if anneal else ['no wd anneal']
    r = lora_cfg.get('r', 16)
    knobs += [f'r {r}'] if r != 16 else []
    return f'{name} ({", ".join(knobs)})' if knobs else name


def backbone_name(cfg: Config) -> str:
    """A short backbone label (DINOv2 size, transformers model type or folder)."""
    backbone = _get(cfg, 'model', 'backbone', default={})
    kind = backbone.get('type', '?')
    if kind == 'DinoVisionTransformer':
        return f'DINOv2-{_VIT_SIZES.get(backbone.get("embed_dim"), backbone.get("embed_dim"))}'
    if kind == 'HFVisionBackbone':
        model = backbone.get('model')
        return (model.get('model_type', 'HF') if hasattr(model, 'get')
                else osp.basename(str(model).rstrip('/')))
    return kind


def setting_name(cfg: Config, targets: Sequence[str]) -> str:
    """The paper setting a run belongs to, or '' (matched by train data and targets)."""
    if set(targets) >= set(DGOD_TARGETS):
        return 'Diverse Weather'
    text = str(_get(cfg, 'train_dataloader', 'dataset', default=''))
    crop = _get(cfg, 'crop_size', default=None)
    size = f' ({crop[0]})' if isinstance(crop, (list, tuple)) else ''
    if set(targets) >= {'citys', 'bdd', 'map'}:
        if 'urbansyn' in text and 'cityscapes' not in text:
            return f'G + S + U -> C, B, M{size}'
        if 'synthia' in text and 'urbansyn' not in text and 'cityscapes' not in text:
            return f'GTAV + Synthia -> C, B, M{size}'
        if 'gta' in text and 'synthia' not in text and 'cityscapes' not in text:
            return f'GTAV -> C, B, M{size}'
    if set(targets) >= {'bdd', 'map'} and 'cityscapes' in text and 'gta' not in text:
        return f'Cityscapes -> B, M{size}'
    return ''


def read_run(work_dir: PathLike) -> dict:
    """The result row of one work dir (newest run with an evaluation); see module doc."""
    work_dir = os.fspath(work_dir)
    if not osp.isdir(work_dir):
        raise ValueError(f'{work_dir}: not a directory')
    for run_dir in reversed(_run_dirs(work_dir)):
        rows = _eval_rows(osp.join(run_dir, 'vis_data', 'scalars.json'))
        if rows:
            break
    else:
        raise ValueError(f'{work_dir}: no evaluation (no *_mIoU / *_mAP scalar) in any run')
    raw, metrics = rows[-1]
    metric = 'mIoU' if any(m == 'mIoU' for _, m in metrics) else 'mAP'
    values = {t: v for (t, m), v in metrics.items() if m == metric}
    mean = values.pop('mean', None)
    if mean is None:
        mean = sum(values.values()) / len(values)
    cfg = _config_of(work_dir, run_dir)
    method = method_name(cfg)
    setting = setting_name(cfg, values)
    paper = PAPER_RESULTS.get((method, setting), {})
    if paper and 'mean' not in paper:
        paper = dict(paper, mean=sum(paper.values()) / len(paper))
    return dict(run=osp.basename(osp.normpath(work_dir)), method=method,
                backbone=backbone_name(cfg), setting=setting, metric=metric,
                trainable=_trainable(run_dir), targets=values, mean=mean,
                iterations=raw.get('step', raw.get('iter')), paper=paper)


def collect_rows(work_dirs: Sequence[PathLike]) -> List[dict]:
    """One row per work dir (:func:`read_run`); a one-line error when none is given."""
    if not work_dirs:
        raise ValueError('collect_results: no work dir given')
    return [read_run(w) for w in work_dirs]


# ------------------------------------------------------------------------ outputs
def _columns(rows):
    targets = []
    for row in rows:
        targets += [t for t in row['targets'] if t not in targets]
    return targets


def _table(rows):
    """Header and string cells shared by the markdown and CSV outputs."""
    targets = _columns(rows)
    header = (['run', 'method', 'backbone', 'setting', 'trainable params'] +
              [f'{t} {rows[0]["metric"] if len({r["metric"] for r in rows}) == 1 else ""}'.strip()
               for t in targets] + ['mean', 'iterations'] +
              [f'paper {t}' for t in targets] + ['paper mean'])

    def num(value):
        return '' if value is None else f'{value:.2f}'

    body = []
    for row in rows:
        body.append([row['run'], row['method'], row['backbone'], row['setting'],
                     '' if row['trainable'] is None else str(row['trainable'])] +
                    [num(row['targets'].get(t)) for t in targets] +
                    [num(row['mean']), '' if row['iterations'] is None else str(row['iterations'])]
                    + [num(row['paper'].get(t)) for t in targets] +
                    [num(row['paper'].get('mean'))])
    return header, body


def format_markdown(rows: List[dict]) -> str:
    """The rows as a markdown table."""
    header, body = _table(rows)
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(cells) + ' |' for cells in body]
    return '\n'.join(lines) + '\n'


def format_csv(rows: List[dict]) -> str:
    """The rows as CSV text."""
    header, body = _table(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator='\n')
    writer.writerow(header)
    writer.writerows(body)
    return out.getvalue()


def _plot(rows, path):
    import matplotlib  # heavy, for the figure only
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    labels = [f'{r["method"]}\n{r["run"]}' for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(rows)), 3.6))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r['mean'] for r in rows], width=0.4, label='ours')
    paper = [r['paper'].get('mean') for r in rows]
    if any(p is not None for p in paper):
        ax.bar([x + 0.2 for x in xs], [p or 0.0 for p in paper], width=0.4, label='paper')
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=7)
    metrics = sorted({r['metric'] for r in rows})
    ax.set_ylabel(f'mean {" / ".join(metrics)}')
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format='png', dpi=120)
    plt.close(fig)


def collect_results(work_dirs: Sequence[PathLike], out: PathLike = 'results') -> Dict[str, object]:
    """Read the runs and write ``<out>.md``, ``<out>.csv``, ``<out>.png``; return the paths
    (and the rows under ``'rows'``).

    A work dir that cannot be read (missing, no run, a broken log or config) is left out:
    the others are written, then :class:`~soma.utils.cli.InputsFailed` names every bad one
    (``.done``: the paths written). Nothing is written when none can be read.
    """
    if not work_dirs:
        raise ValueError('collect_results: no work dir given')
    rows, failed = [], []
    for work_dir in work_dirs:
        try:
            rows.append(read_run(work_dir))
        except (OSError, ValueError) as e:  # a bad input; the others are still read
            reason = one_line(e)
            name = os.fspath(work_dir)
            failed.append((name, reason if name in reason else f'{name}: {reason}'))
    if not rows:
        raise InputsFailed(failed, what='work dirs')
    paths = _write_outputs(rows, os.fspath(out))
    if failed:
        raise InputsFailed(failed, done=list(paths.values()), what='work dirs')
    return dict(paths, rows=rows)


def _write_outputs(rows, out):
    """Write the table, the CSV and the chart of ``rows`` (atomically); their paths."""
    markdown, table = format_markdown(rows), format_csv(rows)
    paths = dict(markdown=out + '.md', csv=out + '.csv', png=out + '.png')
    with atomic_output(paths['png']) as tmp_png, atomic_output(paths['csv']) as tmp_csv, \
            atomic_output(paths['markdown']) as tmp_md:
        _plot(rows, tmp_png)
        with open(tmp_csv, 'w', encoding='utf-8', newline='') as f:
            f.write(table)
        with open(tmp_md, 'w', encoding='utf-8') as f:
            f.write(markdown)
    return paths


# ------------------------------------------------------------------------ command line
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line of ``tools/collect_results.py``."""
    parser = ArgumentParser(description='Collect run results into one table')
    parser.add_argument('work_dirs', nargs='+', help='mmengine work dirs of the runs')
    parser.add_argument('--out', default='results',
                        help='output path without extension (writes .md, .csv, .png)')
    return parser.parse_args(argv)


def _collect_cli(args):
    try:
        paths = collect_results(args.work_dirs, args.out)
    except InputsFailed as e:
        for path in e.done:  # the table of the good work dirs, written
            print(path)
        raise
    for key in ('markdown', 'csv', 'png'):
        print(paths[key])


def main(argv: Optional[List[str]] = None) -> int:
    """``tools/collect_results.py``: exit code 0, or 1 with one ``error:`` line (naming every
    work dir that could not be read, after the table of the others was written)."""
    return run_cli(_collect_cli, parse_args(argv))
