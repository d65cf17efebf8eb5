"""Run the sweep CLI with one fault injected at a point of submission (used by the fault suite).

    python -m tests.faults.inject POINT -- run SPEC --executor slurm ...

POINT is where the launcher SIGKILLs itself: ``before-sbatch`` (the ``submitting/`` note is
written, ``sbatch`` not run), ``during-sbatch`` (``sbatch`` queued the array; submitit has not
named the pickles yet), ``after-sbatch`` (``sbatch`` returned; no job tracked), ``tracking`` (the
first task tracked, the others not), or ``none``. ``hold`` does not kill: once every task is
tracked the launcher (holding the store) writes ``<store>/../hold.held`` and waits, at most
300 s, for ``<store>/../hold.release``. The injection patches this process only.
"""

from __future__ import annotations

import os
import signal
import sys


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def inject(point: str) -> None:
    from submitit.core import utils

    from benchmarks import store

    if point == "before-sbatch":
        begin = store.Store.begin_submission

        def begin_then_die(self, *a, **k):
            begin(self, *a, **k)
            _die()

        store.Store.begin_submission = begin_then_die
    elif point == "during-sbatch":
        call = utils.CommandFunction.__call__

        def sbatch_then_die(self, *a, **k):
            out = call(self, *a, **k)
            if self.command and self.command[0] == "sbatch":
                _die()
            return out

        utils.CommandFunction.__call__ = sbatch_then_die
    elif point in ("after-sbatch", "tracking"):
        write = store.Store.write_job
        calls = {"n": 0}

        def write_then_die(self, *a, **k):
            if calls["n"] >= (0 if point == "after-sbatch" else 1):
                _die()
            calls["n"] += 1
            return write(self, *a, **k)

        store.Store.write_job = write_then_die
    elif point == "hold":
        import time

        track = store.Store.write_job

        def write_then_hold(self, *a, **k):
            out = track(self, *a, **k)
            if len(list(self.root.joinpath("jobs").glob("*.json"))) >= 2:
                held, release = self.root.parent / "hold.held", self.root.parent / "hold.release"
                if not held.exists():
                    held.touch()
                    deadline = time.monotonic() + 300
                    while not release.exists() and time.monotonic() < deadline:
                        time.sleep(0.2)
            return out

        store.Store.write_job = write_then_hold
    elif point != "none":
        raise SystemExit(f"unknown injection point {point!r}")


def main(argv: list[str]) -> int:
    point, sep, rest = argv[0], argv[1], argv[2:]
    assert sep == "--", "usage: python -m tests.faults.inject POINT -- ARGS"
    inject(point)
    from benchmarks.sweep_cli import main as cli_main

    return cli_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
