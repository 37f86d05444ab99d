"""Test helper: run an operation in forked children and kill each with SIGKILL at a random moment of its run, as a
crash or an out-of-memory kill would (no `finally`, no cleanup), so that a test can look at what it left."""

import os
import random
import signal
import time


def _forked(operation, *args):
    pid = os.fork()
    if pid == 0:  # the child: run, then leave at once (pytest's own exit handlers must not run twice)
        code = 1
        try:
            import torch

            torch.set_num_threads(1)  # OpenMP thread pools do not survive a fork
            operation(*args)
            code = 0
        finally:
            os._exit(code)
    return pid


def killed_runs(operation, targets, *, seed=0):
    """Run `operation(target)` to the end once (on `targets[0]`, to time it), then once per other target, killed at a
    random moment between its start and 1.2 times that duration. Yields each killed target."""
    start = time.monotonic()
    _, status = os.waitpid(_forked(operation, targets[0]), 0)
    assert status == 0, "the operation fails even when nobody kills it"
    duration = time.monotonic() - start
    rng = random.Random(seed)
    for target in targets[1:]:
        pid = _forked(operation, target)
        time.sleep(rng.uniform(0, 1.2 * duration))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        yield target
