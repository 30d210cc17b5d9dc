"""Test plugin for sweeps (``--plugin tests.sweep_plugin``), imported in every worker:
registers ``segfaults``, a backend whose native code dies of SIGSEGV while running, as a
runtime's would."""
import os
import signal

from backendiff.backends.pytorch import TorchAdapter, TorchCompiled
from backendiff.registry import register_backend


class SweepSegfaults(TorchAdapter):
    name = "segfaults"

    def compile(self, module, folder):
        class Dies(TorchCompiled):
            def run(self, sample):
                os.kill(os.getpid(), signal.SIGSEGV)

        return Dies(module)


register_backend(SweepSegfaults, replace=True)
