"""Test plugin for sweeps (``--plugin tests.sweep_integrity_plugin``), imported in every
worker: registers ``wrongshape``, a backend that returns each output with one element too
many (as TVM's ``grid_sample`` did), and ``failsconvert``, a backend whose conversion fails."""
import numpy as np

from backendiff.backends.pytorch import TorchAdapter, TorchCompiled
from backendiff.registry import register_backend


class WrongShape(TorchAdapter):
    """Test-only: PyTorch eager, every output flattened with an extra element."""

    name = "wrongshape"

    def compile(self, module, folder):
        class Longer(TorchCompiled):
            def run(self, sample):
                return [np.append(np.ravel(o), np.float32(0)) for o in super().run(sample)]

        return Longer(module)


class FailsConvert(TorchAdapter):
    """Test-only: the conversion raises, as a converter that rejects an operator does."""

    name = "failsconvert"

    def convert(self, model, folder):
        raise RuntimeError("failsconvert: no conversion for this model (test backend)")


register_backend(WrongShape, replace=True)
register_backend(FailsConvert, replace=True)
