"""Test plugin for sweeps (``--plugin tests.sweep_plugin``), imported in every worker:
registers ``segfaults``, a backend whose native code dies of SIGSEGV while running, as a
runtime's would."""
import os
import signal

from backendiff.backends.pytorch import TorchAdapter, TorchCompiled
from backendiff.registry import register_backend


class Segfaults(TorchAdapter):
    """Test-only: dies of SIGSEGV in the middle of running, as a native runtime would."""

    name = "segfaults"

    def compile(self, module, folder):
        class Dies(TorchCompiled):
            def run(self, sample):
                os.kill(os.getpid(), signal.SIGSEGV)

        return Dies(module)


register_backend(Segfaults, replace=True)
