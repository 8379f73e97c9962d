"""Run a tool of tools/ in-process (its ``main(argv)``) or as a subprocess."""
import importlib.util
import json
import os
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


# a fresh interpreter running a tool, counting how often it opens the files in $WATCH
COUNT_OPENS = r'''
import collections, json, os, runpy, sys
watch = {os.path.realpath(p) for p in os.environ['WATCH'].split(os.pathsep)}
opened = collections.Counter()
def hook(event, args):
    if event == 'open' and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(args[0]))
        if path in watch:
            opened[os.path.basename(path)] += 1
sys.addaudithook(hook)
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name='__main__')
    code = 0
except SystemExit as e:
    code = e.code
print('OPENED', json.dumps(dict(opened)), code)
'''


def tool_opens(tool, watch, *args):
    """Run ``python tools/<tool> ARGS`` in a fresh interpreter that counts the opens of the
    files in ``watch`` (``sys.audit``'s ``open`` event); ``{basename: count}``, after
    checking that the tool exited 0."""
    out = subprocess.run([sys.executable, '-c', COUNT_OPENS, osp.join(REPO, 'tools', tool),
                          *map(str, args)], capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ, WATCH=os.pathsep.join(map(str, watch))),
                         timeout=600)
    line = [l for l in out.stdout.splitlines() if l.startswith('OPENED ')]
    assert line, out.stderr[-2000:]
    counts, code = line[-1][len('OPENED '):].rsplit(' ', 1)
    assert code == '0', out.stderr[-2000:]
    return json.loads(counts)
