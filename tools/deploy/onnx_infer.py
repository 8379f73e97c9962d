"""Segment images, folders and videos with an exported model; needs onnxruntime, numpy and
opencv only (no torch, no OpenMMLab).

    python tools/deploy/onnx_infer.py MODEL.onnx INPUT... --out DIR [--batch-size N]
        [--frame-labels] [--opacity A] [--threads T]

See soma/deploy/runtime.py.
"""
import importlib.util
import os.path as osp
import sys

# The runner is loaded from its file, not imported as soma.deploy.runtime: importing the
# package would run soma/__init__.py, which imports torch and registers every model.
RUNTIME = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'soma',
                   'deploy', 'runtime.py')


def load_runtime():
    """soma/deploy/runtime.py as a module of its own (no soma package import)."""
    spec = importlib.util.spec_from_file_location('soma_onnx_runtime', RUNTIME)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    return load_runtime().main(argv)


if __name__ == '__main__':
    sys.exit(main())
