"""Write a trained model to one ONNX file, checked against PyTorch.

:func:`export_model` takes a built model (``soma.apis.inference.init_model``) and:

1. merges the adapters and fixes the input size (:mod:`soma.deploy.graphs`);
2. exports with torch's TorchScript-based exporter (``dynamo=False``). It traces with real
   tensors, so the shape tensors that mmdet's ``MSDeformAttnPixelDecoder`` reads
   (``torch._shape_as_tensor``) and the split sizes of mmcv's deformable attention become
   constants of the fixed size; ``torch.export`` (``dynamo=True``) stops at both
   (data-dependent shapes). The model is a CPU copy, where mmcv's
   ``MultiScaleDeformableAttention`` runs its pure-PyTorch ``grid_sample`` path (opset >= 16)
   instead of the compiled kernel no exporter can see;
3. writes the ``soma.*`` metadata (JSON values) the runner needs into ``metadata_props``;
4. runs the file with onnxruntime on random images (N = 1, and N = 2 with a free batch)
   and compares with the PyTorch graph (logits within 1e-3 of their range; detection
   scores 1e-4, boxes 1e-3 of the image size, a box matched among the PyTorch boxes of its
   label and score, as near-tied scores may swap ranks);

all into a temporary file in the target folder, renamed onto ``out`` only when every step
passed. A failure is an :class:`~soma.deploy.graphs.ExportError` naming the module (the one
whose forward raised while traced, or the one that runs the operator without ONNX form).
"""
import contextlib
import json
import re
import warnings

import numpy as np
import torch
from mmdet.models.detectors.base import BaseDetector
from torch import nn
# the documented home of TorchDispatchMode (used to find the module of a failing op)
from torch.utils._python_dispatch import TorchDispatchMode

from soma.utils.atomic import atomic_output

from .graphs import (ADAPTER_MARK, DetrGraph, ExportError, SegmentorGraph,
                     freeze_position_embedding, merged_for_export)
from .runtime import META_PREFIX

__all__ = ['DEFAULT_OPSET', 'MIN_OPSET', 'OUTPUTS', 'task_of', 'build_graph', 'export_graph',
           'write_metadata', 'check_export', 'export_model']

DEFAULT_OPSET = 17
MIN_OPSET = 16  # grid_sample (mmcv's deformable attention) needs opset 16
OUTPUTS = {'segmentation': ('logits', ), 'detection': ('boxes', 'scores', 'labels')}
MAX_BYTES = 2 ** 31 - 2 ** 24  # one ONNX protobuf file holds at most 2 GiB (with headroom)


def task_of(model: nn.Module) -> str:
    """'detection' for an mmdet detector, 'segmentation' for an mmseg segmentor."""
    if isinstance(model, BaseDetector):
        return 'detection'
    if hasattr(model, 'encode_decode'):
        return 'segmentation'
    raise ExportError(f'{type(model).__name__} is neither an mmseg segmentor (encode_decode) '
                      f'nor an mmdet detector')


def build_graph(model: nn.Module, input_hw, task=None) -> nn.Module:
    """The exportable module of ``model``: merged copy, position embedding frozen for
    ``input_hw``, wrapped as :class:`SegmentorGraph` or :class:`DetrGraph`."""
    task = task or task_of(model)
    model = merged_for_export(model)
    freeze_position_embedding(model.backbone, input_hw)
    graph = SegmentorGraph(model, input_hw) if task == 'segmentation' else DetrGraph(model,
                                                                                    input_hw)
    return graph.eval()


def _example(batch, input_hw, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, *input_hw, generator=g) * 255


@contextlib.contextmanager
def _module_trail(root: nn.Module, trail: list):
    """Keep in ``trail`` the names of the modules whose forward is running (outermost
    first); after an exception it still holds the modules the exception left."""
    def enter(label):
        def hook(module, args):
            trail.append(label)
        return hook

    def leave(module, args, output):
        trail.pop()  # returns None: the output stays as it is

    handles = []
    for name, module in root.named_modules():
        name = (name[len('model.'):] if name.startswith('model.') else name) or 'model'
        handles.append(module.register_forward_pre_hook(
            enter(f'{name} ({type(module).__name__})')))
        handles.append(module.register_forward_hook(leave))
    try:
        yield trail
    finally:
        for handle in handles:
            handle.remove()


class _OpSpy(TorchDispatchMode):
    """Records the module trail the first time the aten operator ``op`` runs."""

    def __init__(self, op, trail):
        super().__init__()
        self.op, self.trail, self.where = op, trail, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.where is None and func.name().split('.')[0] == self.op and self.trail:
            self.where = self.trail[-1]
        return func(*args, **(kwargs or {}))


def _module_running(graph, example, op):
    """The innermost module whose forward runs the aten operator ``op`` (or None)."""
    trail = []
    spy = _OpSpy(op, trail)
    try:
        with _module_trail(graph, trail), torch.no_grad(), spy:
            graph(example)
    except Exception:  # noqa: BLE001  (only looking for the operator)
        pass
    return spy.where


def _failure(error, trail, graph, example) -> ExportError:
    """The one-line error: the module whose forward raised, or the one that runs the
    operator the exporter has no ONNX form for."""
    text = str(error)
    reason = ' '.join((text.strip().splitlines() or [type(error).__name__])[0].split())[:300]
    if trail:
        where = trail[-1]
    else:
        ops = re.findall(r"operator '(aten::\w+)'", text)
        where = (_module_running(graph, example, ops[0]) if ops else None) or 'the model'
    return ExportError(f'cannot export {where}: {type(error).__name__}: {reason}')


def export_graph(graph: nn.Module, path, example: torch.Tensor, output_names,
                 opset=DEFAULT_OPSET, dynamic_batch=False):
    """``torch.onnx.export`` (TorchScript-based) of ``graph`` on ``example`` into ``path``;
    errors become :class:`ExportError` naming the module."""
    if opset < MIN_OPSET:
        raise ExportError(f'--opset {opset}: at least {MIN_OPSET} is needed (grid_sample of '
                          f'the deformable attention)')
    size = sum(t.numel() * t.element_size() for t in graph.state_dict().values())
    if size > MAX_BYTES:
        raise ExportError(f'the model holds {size / 2**30:.1f} GiB of weights; one ONNX file '
                          f'holds at most 2 GiB (external data is not supported here)')
    names = ['image'] + list(output_names)
    dynamic_axes = {name: {0: 'batch'} for name in names} if dynamic_batch else None
    trail = []
    try:
        with _module_trail(graph, trail), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter('ignore')  # tracer warnings: every shape is fixed on purpose
            torch.onnx.export(graph, (example, ), path, dynamo=False, opset_version=opset,
                              input_names=['image'], output_names=list(output_names),
                              dynamic_axes=dynamic_axes, do_constant_folding=True)
    except Exception as e:  # noqa: BLE001  (tracing runs arbitrary model code)
        raise _failure(e, trail, graph, example) from None


def _foreign_nodes(model):
    """``(node name, domain::op)`` of nodes outside the standard ONNX domain."""
    return [(n.name, f'{n.domain}::{n.op_type}') for n in model.graph.node
            if n.domain not in ('', 'ai.onnx')]


def _node_module(node_name):
    """The module path in a TorchScript-exported node name ('/decode_head/conv/Conv')."""
    parts = [p for p in node_name.split('/') if p][:-1]
    return '.'.join(p.split('.')[-1] if '.' in p else p for p in parts) or node_name


def write_metadata(path, metadata: dict):
    """Store ``metadata`` as ``soma.<key>`` = JSON in the file's ``metadata_props``; refuse
    an operator outside the ONNX standard (onnxruntime would not run it)."""
    import onnx  # deployment dependency (requirements/deploy.txt)
    model = onnx.load(path)
    foreign = _foreign_nodes(model)
    if foreign:
        name, op = foreign[0]
        raise ExportError(f'cannot export {_node_module(name)}: it exports as the custom '
                          f'operator {op} (an mmcv compiled op?), which onnxruntime cannot run')
    if any(ADAPTER_MARK in t.name for t in model.graph.initializer) or any(
            ADAPTER_MARK in n.name for n in model.graph.node):
        raise ExportError('the exported graph still holds an adapter tensor')
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, json.dumps(value)
    onnx.save(model, path)


def _detection_box_diff(got, expected, score_tol=1e-4):
    """Largest distance from each exported box to the nearest PyTorch box of the same label
    and (within ``score_tol``) the same score: near-tied scores may swap ranks, and at the
    top-K cut-off (scores within ``score_tol`` of the last one) swap in and out."""
    worst = 0.0
    for boxes, scores, labels, ref_boxes, ref_scores, ref_labels in zip(*got, *expected):
        cut = ref_scores.min() + score_tol
        for box, score, label in zip(boxes, scores, labels):
            match = (ref_labels == label) & (np.abs(ref_scores - score) <= score_tol)
            dist = np.abs(ref_boxes[match] - box).max(1).min() if match.any() else np.inf
            if score > cut:
                worst = max(worst, float(dist))
    return worst


def check_export(graph: nn.Module, path, batches=(1, )) -> dict:
    """Max differences onnxruntime vs PyTorch on random images of each batch size; raises
    :class:`ExportError` beyond the tolerances of the module docstring."""
    import onnxruntime as ort  # deployment dependency (requirements/deploy.txt)
    try:
        session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    except Exception as e:  # noqa: BLE001  (onnxruntime's own exception types)
        raise ExportError(f'onnxruntime cannot load the exported graph: '
                          f'{(str(e).splitlines() or [type(e).__name__])[0]}') from None
    h, w = graph.input_hw
    report = {}
    for batch in batches:
        x = _example(batch, (h, w), seed=batch)
        with torch.no_grad():
            expected = graph(x)
        expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else
                                        (expected, ))]
        try:
            got = session.run(None, {'image': x.numpy()})
        except Exception as e:  # noqa: BLE001
            raise ExportError(f'onnxruntime cannot run the exported graph on a batch of '
                              f'{batch}: {(str(e).splitlines() or [type(e).__name__])[0]}'
                              ) from None
        if len(got) == 1:
            diff = float(np.abs(got[0] - expected[0]).max())
            tol = 1e-3 * float(expected[0].max() - expected[0].min()) + 1e-6
            report[f'logits_n{batch}'] = diff
            bad = [('logits', diff, tol)] if diff > tol else []
        else:
            box_diff = _detection_box_diff(got, expected)
            score_diff = float(np.abs(got[1] - expected[1]).max())
            report.update({f'boxes_n{batch}': box_diff, f'scores_n{batch}': score_diff})
            bad = [(n, d, t) for n, d, t in (('boxes', box_diff, 1e-3 * max(h, w)),
                                             ('scores', score_diff, 1e-4)) if d > t]
        if bad:
            name, diff, tol = bad[0]
            raise ExportError(f'the exported graph differs from PyTorch: {name} of a batch of '
                              f'{batch} by {diff:.3g} (> {tol:.3g})')
    return report


def export_model(model: nn.Module, out, input_hw, opset=DEFAULT_OPSET, dynamic_batch=False,
                 metadata=None, check=True) -> dict:
    """Export ``model`` (a built segmentor or Co-DETR) to ``out`` for ``input_hw`` inputs;
    return a report (path, task, input size, check differences)."""
    input_hw = tuple(int(s) for s in input_hw)
    if len(input_hw) != 2 or min(input_hw) < 1:
        raise ExportError(f'--shape must be two positive sizes H W, got {input_hw}')
    task = task_of(model)
    graph = build_graph(model, input_hw, task)
    example = _example(2 if dynamic_batch else 1, input_hw)
    meta = dict(metadata or {}, task=task, input_size=list(input_hw),
                dynamic_batch=bool(dynamic_batch), opset=int(opset))
    with atomic_output(out) as tmp:
        export_graph(graph, tmp, example, OUTPUTS[task], opset, dynamic_batch)
        write_metadata(tmp, meta)
        diffs = check_export(graph, tmp, (1, 2) if dynamic_batch else (1, )) if check else {}
    return dict(path=str(out), task=task, input_size=list(input_hw), check=diffs)
