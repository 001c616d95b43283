"""Faults injected into `python -m cnntrain` subprocesses of tests/test_reliability.py
(this folder is put first on their PYTHONPATH); inert unless a CNNTRAIN_TEST_* variable
is set.

- CNNTRAIN_TEST_KILL_AT=N: rank 1 SIGKILLs itself before step N+1, on the first attempt only;
- CNNTRAIN_TEST_SLEEP_AT=N: the step after N completed steps sleeps (a hang);
- CNNTRAIN_TEST_POISON=SIGNAL: a loader worker sends itself SIGNAL when it opens a file
  whose name contains "poison" (a native decoder crashing on it).
"""
import os
import signal
import time

if os.environ.get("CNNTRAIN_TEST_KILL_AT") or os.environ.get("CNNTRAIN_TEST_SLEEP_AT"):
    from cnntrain.engine import train as _train

    _original = _train.Trainer._train_step
    _kill_at = int(os.environ.get("CNNTRAIN_TEST_KILL_AT", "-1"))
    _sleep_at = int(os.environ.get("CNNTRAIN_TEST_SLEEP_AT", "-1"))

    def _sleeping(seconds):
        time.sleep(seconds)

    def _faulty_step(self, images, target, lr):
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if self.progress.step == _kill_at and self.env.rank == 1 and first_attempt:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.progress.step == _sleep_at:
            _sleeping(600)
        return _original(self, images, target, lr)

    _train.Trainer._train_step = _faulty_step

if os.environ.get("CNNTRAIN_TEST_POISON"):
    from cnntrain.data import inflight as _inflight

    _note = _inflight.note
    _signal = signal.Signals[os.environ["CNNTRAIN_TEST_POISON"]]

    def _poisoned_note(path):
        _note(path)
        if "poison" in os.path.basename(path) and _inflight._state["fd"] is not None:
            os.kill(os.getpid(), _signal)

    _inflight.note = _poisoned_note
