"""Deployment: a trained model as one ONNX file, and an onnxruntime runner for it.

* :mod:`soma.deploy.graphs`: the exportable forms (adapters merged, input size fixed);
* :mod:`soma.deploy.export`: ``torch.onnx.export``, metadata, the check against PyTorch;
* :mod:`soma.deploy.runtime`: the runner (numpy, opencv and onnxruntime only; it imports
  nothing of ``soma``, and ``tools/deploy/onnx_infer.py`` loads it by file path so that
  ``soma/__init__.py`` and torch are never imported).

The entry point from a config and a checkpoint is :func:`soma.apis.deploy.export_onnx`
(``tools/deploy/export_onnx.py``). This package face imports none of its modules.
"""
