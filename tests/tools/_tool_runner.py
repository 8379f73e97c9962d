"""Run a tool of tools/ in-process (its ``main(argv)``) or as a subprocess."""
import importlib.util
import os.path as osp
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def tool_main(tool, *args):
    """``tools/<tool>``'s ``main(argv)`` in this process; returns its exit code."""
    spec = importlib.util.spec_from_file_location(f'_tool_{tool[:-3]}',
                                                  osp.join(REPO, 'tools', tool))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(a) for a in args])


def tool_subprocess(tool, *args):
    """``python tools/<tool> ARGS`` in a fresh interpreter; the CompletedProcess."""
    return subprocess.run([sys.executable, osp.join(REPO, 'tools', tool), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
