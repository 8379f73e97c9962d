"""How every command-line tool of the project reports a user error: one line, exit 1.

A tool's ``main`` calls ``run_cli(function, ...)``. The exceptions that mean "bad input"
(a missing or unreadable file, a bad value, a config that does not parse, a missing optional
package) become ``error: <one line>`` on stderr and exit code 1; every other exception is a
bug and keeps its traceback. Code that knows which input was at fault (the config key being
built, the files being merged) puts it before the message with :func:`prefix_error`.

A process started by torchrun also writes the line to its error file
(``TORCHELASTIC_ERROR_FILE``, torch elastic's format), where torchrun's report shows it;
under :mod:`soma.apis.torchrun` (``tools/dist_train.sh``, ``dist_test.sh``), which prints
the error of all its processes as one line, it prints nothing itself.
"""
import argparse
import contextlib
import json
import os
import sys
import time
from typing import Callable, Iterator, NoReturn, Sequence, Tuple

from mmengine.config import DictAction
from mmengine.config.utils import ConfigParsingError

__all__ = ['USER_ERRORS', 'InputsFailed', 'run_cli', 'one_line', 'prefix_error',
           'inputs_named', 'LAUNCHER_PRINTS_ERRORS', 'ArgumentParser']

# what a tool reports in one line; CheckpointError is a ValueError
USER_ERRORS = (OSError, ValueError, KeyError, TypeError, ImportError, SyntaxError,
               ConfigParsingError)
# set (to '1') by soma.apis.torchrun for its processes: it prints their one-line errors
LAUNCHER_PRINTS_ERRORS = 'SOMA_LAUNCHER_PRINTS_ERRORS'


class InputsFailed(ValueError):
    """Some inputs of a command that takes several could not be used; the others were.

    ``failed``: ``(input, reason)`` pairs, each reason naming its input; ``done``: what the
    good inputs gave. The message is one line naming every failed input (for
    :func:`run_cli`); with a single input, just its reason.
    """

    def __init__(self, failed: Sequence[Tuple[str, str]], done: Sequence = (),
                 what: str = 'inputs'):
        self.failed, self.done = list(failed), list(done)
        reasons = '; '.join(reason for _, reason in self.failed)
        total = len(self.failed) + len(self.done)
        super().__init__(reasons if total == 1 else
                         f'{len(self.failed)} of {total} {what} failed: {reasons}')


# the attribute holding what prefix_error put before an exception's message
_PREFIX = 'soma_error_prefix'


def prefix_error(error: BaseException, prefix: str) -> BaseException:
    """Put ``prefix`` (the input at fault: a file, a config key) before ``error``'s one-line
    message (:func:`one_line`); the exception keeps its type and traceback. Returns it."""
    setattr(error, _PREFIX, f'{prefix}: {getattr(error, _PREFIX, "")}')
    return error


@contextlib.contextmanager
def inputs_named(**inputs) -> Iterator[None]:
    """A user error raised in the block that names none of the files ``inputs`` (role=path;
    objects that are no path are skipped) gets them before its message: the error came from
    their combination (a backbone and an adapter that do not fit)."""
    try:
        yield
    except USER_ERRORS as error:
        paths = {role: os.fspath(p) for role, p in inputs.items()
                 if isinstance(p, (str, os.PathLike))}
        if paths and not any(p in one_line(error) for p in paths.values()):
            prefix_error(error, ', '.join(f'{role} {p}' for role, p in paths.items()))
        raise


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (a KeyError's key without its quotes), after what
    :func:`prefix_error` put before it."""
    msg = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return getattr(error, _PREFIX, '') + (' '.join(msg.split()) or type(error).__name__)


def _tell_launcher(line: str) -> bool:
    """Under torchrun, write ``line`` to this process's error file; True when the launcher
    prints it (:data:`LAUNCHER_PRINTS_ERRORS`)."""
    path = os.environ.get('TORCHELASTIC_ERROR_FILE')
    if not path:
        return False
    with open(path, 'w', encoding='utf-8') as f:
        json.dump({'message': line, 'timestamp': int(time.time())}, f)
    return os.environ.get(LAUNCHER_PRINTS_ERRORS) == '1'


def _report(message: str) -> None:
    """``error: <message>`` on stderr (or to the launcher, :func:`_tell_launcher`)."""
    line = f'error: {message}'
    if not _tell_launcher(line):
        print(line, file=sys.stderr)


def run_cli(fn: Callable, *args, **kwargs) -> int:
    """Run ``fn(*args, **kwargs)``; a user error becomes ``error: <one line>`` and exit 1."""
    try:
        fn(*args, **kwargs)
    except USER_ERRORS as e:
        _report(one_line(e))
        return 1
    return 0


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors (a missing argument, a value of the wrong type)
    are one ``error:`` line and exit code 1, as every other bad input (argparse prints the
    usage, then ``prog: error: ...``, and exits with 2)."""

    def error(self, message: str) -> NoReturn:
        """Report ``message`` in one line and exit with 1."""
        _report(f'{self.prog}: {message} (see {self.prog} --help)')
        sys.exit(1)

    def add_cfg_options(self) -> None:
        """mmengine's ``--cfg-options key=value ...`` config overrides."""
        self.add_argument('--cfg-options', nargs='+', action=DictAction,
                          help='override config settings, key=value')
