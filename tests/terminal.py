"""Children started as a user's terminal starts them, for tests that send Ctrl-C."""

from __future__ import annotations

import sys

SIGINT_AS_AT_A_TERMINAL = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
"""Run argv[1:] with Ctrl-C as at a terminal. A test run started in the background (`cmd &`, as CI starts it)
ignores SIGINT; a child inherits that through exec, and Python then installs no KeyboardInterrupt handler."""


def as_at_a_terminal(command: list[str]) -> list[str]:
    """`command` (its first item an executable path) run with SIGINT's default action restored first."""
    return [sys.executable, "-c", SIGINT_AS_AT_A_TERMINAL, *command]
