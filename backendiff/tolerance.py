"""Default tolerances by the precision a backend runs in.

An element passes when ``|actual − reference| <= atol + rtol·|reference|`` (the
``numpy.allclose`` rule; Polygraphy instead requires *both* abs and rel to fail, which
lets large relative errors on small values through).

fp32 is looser than ``torch.testing`` (rtol 1.3e-6, atol 1e-5) on purpose: those limits are
for one kernel library against itself. Different runtimes sum convolutions in different
orders, and on the small CNNs and ResNet-18 here fp32 runtimes differ from PyTorch by a
few 1e-6 relative (see the fp64 golden row of a report for what fp32 rounding alone
gives). 1e-4 flags anything past accumulation-order noise, such as a bf16 kernel run
silently (errors of 1e-3 to 1e-2).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float

    def to_dict(self) -> dict:
        return {"rtol": self.rtol, "atol": self.atol}


DEFAULTS: dict[str, Tolerance] = {
    "fp64": Tolerance(rtol=1e-7, atol=1e-7),
    "fp32": Tolerance(rtol=1e-4, atol=1e-4),
    "tf32": Tolerance(rtol=5e-3, atol=5e-3),
    "fp16": Tolerance(rtol=1e-2, atol=1e-2),
    "bf16": Tolerance(rtol=5e-2, atol=5e-2),
    "int8": Tolerance(rtol=1e-1, atol=1e-1),
}


def tolerance_for(precision: str, rtol: float | None = None, atol: float | None = None) -> Tolerance:
    base = DEFAULTS.get(precision, DEFAULTS["fp32"])
    return Tolerance(rtol=base.rtol if rtol is None else rtol, atol=base.atol if atol is None else atol)
