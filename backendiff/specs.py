"""Backend spec syntax: ``NAME[:VARIANT][,KEY=VALUE...]``.

On the command line several specs share one comma-separated list, so a token holding
``=`` is an option of the spec before it::

    ort,openvino:fp32,route=onnx,tvm   ->  ort | openvino:fp32,route=onnx | tvm

``tvm:opt=3`` (an option where the variant would be) is accepted too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import BadInput

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class BackendSpec:
    name: str
    variant: str | None = None
    options: tuple[tuple[str, str], ...] = field(default=())

    @property
    def text(self) -> str:
        opts = [f"{k}={v}" for k, v in self.options]
        if self.variant is None and opts:  # tvm:opt=3, as it is written
            return f"{self.name}:" + ",".join(opts)
        head = self.name if self.variant is None else f"{self.name}:{self.variant}"
        return ",".join([head] + opts)

    def option(self, key: str, default: str | None = None) -> str | None:
        return dict(self.options).get(key, default)

    def with_defaults(self, variant: str) -> "BackendSpec":
        """The canonical spec: variant filled in, options sorted (for cache keys)."""
        return BackendSpec(self.name, self.variant or variant, tuple(sorted(self.options)))

    def __str__(self) -> str:
        return self.text


def _parse_option(token: str, context: str) -> tuple[str, str]:
    key, _, value = token.partition("=")
    key, value = key.strip(), value.strip()
    if not _KEY.match(key) or not value:
        raise BadInput(f"malformed backend option {token!r} in {context!r}: expected KEY=VALUE")
    return key, value


def parse_spec(text: str) -> BackendSpec:
    """Parse one spec such as ``openvino:fp16,route=onnx``."""
    specs = parse_specs(text)
    if len(specs) != 1:
        raise BadInput(f"expected one backend spec, got {len(specs)} in {text!r}")
    return specs[0]


def parse_specs(text: str | list[str] | tuple[str, ...]) -> list[BackendSpec]:
    """Parse a comma-separated list of specs (or several such lists)."""
    if isinstance(text, (list, tuple)):
        return [s for part in text for s in parse_specs(part)]
    tokens = [t.strip() for t in str(text).split(",")]
    if not any(tokens):
        raise BadInput("empty backend list")
    specs: list[BackendSpec] = []
    for token in tokens:
        if not token:
            raise BadInput(f"malformed backend list {text!r}: empty entry")
        if "=" in token and ":" not in token.split("=")[0]:
            if not specs:
                raise BadInput(f"malformed backend list {text!r}: option {token!r} before any backend")
            prev = specs[-1]
            key, value = _parse_option(token, text)
            specs[-1] = BackendSpec(prev.name, prev.variant, prev.options + ((key, value),))
            continue
        name, sep, variant = token.partition(":")
        name = name.strip()
        if not _NAME.match(name):
            raise BadInput(f"malformed backend spec {token!r}: expected NAME[:VARIANT][,KEY=VALUE...]")
        options: tuple[tuple[str, str], ...] = ()
        if sep:
            variant = variant.strip()
            if not variant:
                raise BadInput(f"malformed backend spec {token!r}: empty variant after ':'")
            if "=" in variant:
                options = (_parse_option(variant, token),)
                variant = None
            elif not _NAME.match(variant):
                raise BadInput(f"malformed backend spec {token!r}: bad variant {variant!r}")
        specs.append(BackendSpec(name.lower(), variant.lower() if variant else None, options))
    keys = [s.options for s in specs]
    for spec, opts in zip(specs, keys):
        seen = [k for k, _ in opts]
        dup = {k for k in seen if seen.count(k) > 1}
        if dup:
            raise BadInput(f"backend spec {spec.text!r} sets {sorted(dup)[0]!r} twice")
    return specs
