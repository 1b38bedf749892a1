"""Exit statuses and the command line's own error.

0: done (for `verify`: every stream intact). 1: the data is damaged (a `ChecksumError` or
`TruncatedError`: bytes differ from their checksum, or the stream ends early), or the
operation failed on the way (a file or network `OSError`). 2: the input is not what the
command needs (not a stream, not the format named, a conversion the target format cannot
hold) or the command line is wrong (argparse's own status for usage errors).
"""

from __future__ import annotations

import os
import sys

import serializer

OK = 0
DAMAGED = 1
INVALID = 2
KEYS_IN_MESSAGE = 3  # how many keys the library's messages name


class CliError(Exception):
    """An error to report in one message and exit with `status`."""

    def __init__(self, message: str, status: int = INVALID) -> None:
        super().__init__(message)
        self.status = status


def damaged(error: serializer.ChecksumError | serializer.TruncatedError, where: str) -> CliError:
    """The report of a damaged stream: the library's message, which names the record and the
    keys of its tensors (the first three), then all of them if there are more."""
    message = f"{where}: {error}"
    if len(error.keys) > KEYS_IN_MESSAGE:
        message += f"\n  all {len(error.keys)} keys of that record: " + ", ".join(error.keys)
    return CliError(message, DAMAGED)


def classify(error: BaseException, where: str) -> CliError | None:
    """The report of what the library or the system raised while working on `where`; None for
    what is not expected (a bug: it keeps its traceback)."""
    if isinstance(error, CliError):
        return error
    if isinstance(error, (serializer.ChecksumError, serializer.TruncatedError)):
        return damaged(error, where)
    if isinstance(error, serializer.EndOfStream):
        return CliError(f"{where}: no stream in it (empty)", INVALID)
    if isinstance(error, serializer.SerializerError):
        return CliError(f"{where}: {error}", INVALID)
    if isinstance(error, OSError):
        return CliError(f"{where}: {error}", DAMAGED)
    return None


def emit(text: str) -> None:
    """Print `text` on stdout; a reader that went away (``| head``) ends the command quietly
    with status 1, as other tools do."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the flush at exit does not fail too
        raise CliError("", DAMAGED) from None
