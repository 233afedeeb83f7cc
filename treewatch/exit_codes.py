"""The exit codes of every ``treewatch`` command, the same in text and ``--json`` mode, so a script
can branch on them (``treewatch status && deploy``, ``until treewatch trace ...; do sleep 5; done``).
``treewatch --help`` lists them from here."""

from __future__ import annotations

import signal
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    # What a shell reports for a process ended by a signal (128 + its number), as for `yes` in `yes | head -1`.
    INTERRUPTED = 128 + signal.SIGINT
    BROKEN_PIPE = 128 + signal.SIGPIPE

    @classmethod
    def of(cls, ok: bool) -> ExitCode:
        """OK when the check a command makes holds, FAILURE when it does not."""
        return cls.OK if ok else cls.FAILURE


MEANINGS = {
    ExitCode.OK: "found, healthy, done (rules diff: no difference)",
    ExitCode.FAILURE: "not found, unhealthy, incomplete or refused; bench: not completed or a target missed; "
                      "rules diff: differences",
    ExitCode.USAGE: "usage or configuration error (a bad option or file, an unknown group): nothing was done",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
    ExitCode.BROKEN_PIPE: "output cut short by its reader (`treewatch ... | head`)",
}

