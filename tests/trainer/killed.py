"""``python killed.py STEP ARGS...``: ``adpo ARGS...`` with every worker killed (SIGKILL, as ``kill -9``) right
after the step-STEP checkpoint is complete. ``kill_after`` is shared with fsdp_cpu.py."""

from __future__ import annotations

import os
import signal
import sys


def kill_after(step: int) -> None:
    """From now on, the process SIGKILLs itself as soon as ``checkpoint.save`` of ``step`` returns."""
    from adpo.trainer import checkpoint

    save = checkpoint.save

    def save_then_die(folder, at, *args, **kwargs):
        path = save(folder, at, *args, **kwargs)
        if at == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    checkpoint.save = save_then_die


if __name__ == "__main__":
    kill_after(int(sys.argv.pop(1)))
    from adpo.cli import main

    sys.exit(main())
