"""Test helper: run an operation in forked children and kill each with SIGKILL at a random moment of its run, as a
crash or an out-of-memory kill would (no `finally`, no cleanup), so that a test can look at what it left."""

import json
import os
import random
import signal
import tempfile
import time


def _private_tqdm_lock():
    """tqdm's lock is a multiprocessing semaphore, shared by every forked child: a child killed while it held the lock
    (writing a progress bar) left it taken, and the next child waited for it forever (seen in CI under load). Each
    child takes a lock of its own."""
    import threading

    import tqdm

    for cls in (tqdm.std.tqdm, tqdm.auto.tqdm):
        cls.set_lock(threading.RLock())


def _forked(operation, *args, record_calls_of=None, record_to=None, kill_inside=None):
    pid = os.fork()
    if pid == 0:  # the child: run, then leave at once (pytest's own exit handlers must not run twice)
        code = 1
        try:
            _private_tqdm_lock()
            import torch

            torch.set_num_threads(1)  # OpenMP thread pools do not survive a fork
            if record_calls_of is not None:
                _record_calls(*record_calls_of, record_to)
            if kill_inside is not None:
                _kill_inside(*kill_inside)
            operation(*args)
            code = 0
        finally:
            os._exit(code)
    return pid


def _record_calls(owner, name, path):
    """Append (start, end) monotonic times of every call of `owner.name` to the JSON-lines file `path`."""
    method = getattr(owner, name)

    def timed(*args, **kwargs):
        start = time.monotonic()
        try:
            return method(*args, **kwargs)
        finally:
            with open(path, "a") as handle:
                handle.write(json.dumps([start, time.monotonic()]) + "\n")

    setattr(owner, name, timed)


def _kill_inside(owner, name, call, delay):
    """SIGKILL this process `delay` seconds into its `call`-th call (from 0) of `owner.name`: timed from the call's
    own start, so that the kill lands inside it however loaded the machine is."""
    import threading

    method, calls = getattr(owner, name), [0]

    def armed(*args, **kwargs):
        if calls[0] == call:
            threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()
        calls[0] += 1
        return method(*args, **kwargs)

    setattr(owner, name, armed)


def killed_runs(operation, targets, *, seed=0, during=None):
    """Run `operation(target)` to the end once (on `targets[0]`, to time it), then once per other target, killed at a
    random moment between its start and 1.2 times that duration. `during=(owner, method name)`: each run is killed
    instead inside one of that method's calls (e.g. the checkpoint saves of a training run), a random fraction of that
    call's duration in the timed run after the call starts, so that every kill lands while it writes. Yields each
    killed target."""
    with tempfile.TemporaryDirectory() as scratch:
        record = os.path.join(scratch, "calls.jsonl")
        start = time.monotonic()
        _, status = os.waitpid(_forked(operation, targets[0], record_calls_of=during, record_to=record), 0)
        assert status == 0, "the operation fails even when nobody kills it"
        duration = time.monotonic() - start
        windows = [(0.0, 1.2 * duration)]
        if during is not None:
            with open(record) as handle:
                windows = [(a - start, b - start) for a, b in (json.loads(line) for line in handle)]
            assert windows, f"the timed run never called {during[1]}"
    rng = random.Random(seed)
    for target in targets[1:]:
        if during is None:
            pid = _forked(operation, target)
            time.sleep(rng.uniform(*windows[0]))
            os.kill(pid, signal.SIGKILL)
        else:
            call = rng.choices(range(len(windows)), weights=[b - a for a, b in windows])[0]
            low, high = windows[call]
            pid = _forked(operation, target, kill_inside=(*during, call, rng.uniform(0, high - low)))
        os.waitpid(pid, 0)
        yield target
