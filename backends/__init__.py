"""Backend adapters, one module per runtime (TensorRT: the ``trt`` package), installed as
``backendiff.backends``.

Every module here imports without its runtime installed: runtimes are imported inside
methods, and a missing one makes the adapter *unavailable* with an install hint.
"""
