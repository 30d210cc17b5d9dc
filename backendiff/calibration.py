"""The int8 calibration data of one run: made once, when an int8 variant first asks (drawing
or reading it costs time no fp32-only run should pay), then shared by every int8 backend and
recorded in the report with its hash, which keys their compiled artifacts.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .inputs import samples_sha256

Samples = list[dict[str, np.ndarray]]


class Calibration:
    """The calibration samples that ``source() -> (samples, info)`` makes, and what they are.
    A run without int8 variants has no source (None)."""

    def __init__(self, source: Callable[[], tuple[Samples, dict]] | None = None):
        self._source = source
        self._made: tuple[Samples, dict] | None = None

    def samples(self) -> Samples:
        """The calibration samples (made on the first call)."""
        if self._made is None:
            if self._source is None:
                raise ValueError("this run has no calibration data (no source was given)")
            samples, info = self._source()
            self._made = (samples, {**info, "samples": len(samples), "sha256": samples_sha256(samples)})
        return self._made[0]

    @property
    def info(self) -> dict | None:
        """The source's description of the samples, their count and sha256; None until they
        are made (the report's ``calibration`` block: absent where no int8 variant ran)."""
        return self._made[1] if self._made is not None else None
