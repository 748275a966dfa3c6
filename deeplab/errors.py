"""The user's mistakes as one sentence: the error classes the library raises and the wrapper every command shares.

A `UserError` is a problem the user can fix (bad data, a wrong config value, an unusable checkpoint, a full disk).
Its message is one sentence that names the file or config key, what is wrong, and the fix. Commands run their body
inside `user_errors(...)`, which prints that sentence (never a traceback) and exits with status 1.
"""

import errno
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class UserError(ValueError):
    """A problem the user can fix: the message names the file or config key, what is wrong, and the fix."""


class ConfigError(UserError):
    """A config value that cannot work: the message names the key, the value and what is allowed."""


def one_line(exc: BaseException) -> str:
    """The message of `exc` on one line; an error re-raised from a DataLoader worker is reduced to its own message.

    torch re-raises a worker's exception as the same class with "Caught X in DataLoader worker process N" and the
    worker's whole traceback as the message; the user's sentence is the traceback's last line.
    """
    text = str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        name = f"{type(exc).__module__}.{type(exc).__name__}: "
        text = last.split(name, 1)[1] if name in last else last.split(": ", 1)[-1]
    return " ".join(text.split())


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from or during, newest first."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted"}
# the fix, where it is not to free space: a permission, or a read-only file system, is the file's or folder's own
ACCESS_FIXES = {errno.EACCES: "give this user access to it (see its owner and mode with ls -ld), or choose another",
                errno.EPERM: "give this user access to it (see its owner and mode with ls -ld), or choose another",
                errno.EROFS: "choose a folder on a file system that can be written"}


# the exit status of a writer whose reader has gone (`... | head`): what the shell reports for a process ended by
# SIGPIPE (13), as `cat` and `yes` are; Python ignores that signal and raises BrokenPipeError instead
CLOSED_PIPE_STATUS = 128 + 13


def _pipe_errors_raise(handle_error: Callable) -> Callable:
    """A log handler's handleError that lets a BrokenPipeError through: logging would print a "--- Logging error ---"
    traceback for every later line instead, and the command would go on writing into the closed pipe."""
    def handle(record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            raise sys.exc_info()[1]
        handle_error(record)
    return handle


@contextmanager
def user_errors(logger: str) -> Iterator[None]:
    """Run a command's body: a UserError or a file-system refusal ends it with one logged sentence and exit 1.

    Output into a pipe whose reader has gone (`python evaluate.py ... | head -n 2`) ends the command quietly with
    CLOSED_PIPE_STATUS, as the standard recipe in Python's `signal` docs does: what it prints is flushed here, and
    the rest goes to os.devnull, so the interpreter's own flush at exit finds no broken pipe either."""
    for handler in logging.getLogger().handlers:  # the console handler the command's logging config set up
        if getattr(handler, "stream", None) is sys.stdout:
            handler.handleError = _pipe_errors_raise(handler.handleError)
    try:
        try:
            yield
        except UserError as exc:
            logging.getLogger(logger).error("%s", one_line(exc))
            sys.exit(1)
        except OSError as exc:
            if exc.errno not in DISK_ERRORS:
                raise
            where = exc.filename or "a file"
            fix = ACCESS_FIXES.get(exc.errno, "free space or choose another folder")
            logging.getLogger(logger).error("%s: %s (%s); %s, then run the command again", where,
                                            DISK_ERRORS[exc.errno], exc.strerror or exc, fix)
            sys.exit(1)
        finally:
            if sys.stdout is not None:  # None when started with stdout closed (`>&-`)
                sys.stdout.flush()  # a closed pipe is met here, inside the command, not at the interpreter's exit
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(CLOSED_PIPE_STATUS)
