"""torchrun for the tools (``tools/dist_train.sh``, ``tools/dist_test.sh``): a bad input is one
line, as when the tool runs alone.

Each process torchrun starts reports a user error through :func:`soma.utils.cli.run_cli`
into its error file instead of printing it; when processes fail, this launcher prints their
errors as one ``error:`` line (the same line once) and exits with 1, instead of torchrun's
many-line report. A process that failed otherwise (a bug: its traceback is already printed;
a signal) keeps torchrun's report, raised as it is.
"""
import os
import sys
from typing import List, Optional

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

from soma.utils.cli import LAUNCHER_PRINTS_ERRORS

__all__ = ['user_error_line', 'main']


def user_error_line(failure: ChildFailedError) -> Optional[str]:
    """The one ``error:`` line of the failed processes when each failed on a user error (or
    was stopped by a signal after another one did); None when one failed otherwise."""
    errors, others = {}, False
    for rank, process in sorted(failure.failures.items()):
        if isinstance(process.message, str) and process.message.startswith('error: '):
            errors.setdefault(process.message[len('error: '):], []).append(rank)
        elif process.exitcode >= 0:
            others = True
    if not errors or others:
        return None
    if len(errors) == 1:
        return f'error: {next(iter(errors))}'
    return 'error: ' + '; '.join(f'rank {", ".join(map(str, ranks))}: {message}'
                                 for message, ranks in errors.items())


def main(argv: Optional[List[str]] = None) -> int:
    """torchrun's command line (``torch.distributed.run``); exit code 0, 1 with one
    ``error:`` line for the processes' user errors, or torchrun's report for anything else."""
    os.environ[LAUNCHER_PRINTS_ERRORS] = '1'  # the processes inherit it
    try:
        run(parse_args(argv))
    except ChildFailedError as failure:
        line = user_error_line(failure)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 1
    return 0
