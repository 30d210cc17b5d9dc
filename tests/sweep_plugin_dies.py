"""Test plugin for sweeps: the worker that imports it is killed (as by the OOM killer)."""
import os
import signal

os.kill(os.getpid(), signal.SIGKILL)
