"""Where cells run: worker processes on this machine, or tasks on a Ray cluster."""
from __future__ import annotations

import os
from typing import Any, Callable

from ..errors import BadInput
from .cell import lost_record, run_cell


# -- executors --------------------------------------------------------------------------
def default_workers() -> int:
    return max(1, (os.cpu_count() or 1))


def _cell_process(conn, payload: dict) -> None:
    try:
        conn.send(run_cell(payload))
    except (BrokenPipeError, ConnectionResetError):
        pass            # the driver is gone (interrupted): nobody is left to tell
    finally:
        conn.close()


class LocalExecutor:
    """Worker processes on this machine, ``workers`` at a time, one fresh process per cell
    (forked from a forkserver that has imported torch and backendiff: cheap to start, and
    a cell that dies takes nothing else with it)."""
    name = "local"

    def __init__(self, workers: int):
        self.workers = workers

    def run(self, payloads: list[dict], on_done: Callable[[dict], None], progress: Callable[[str], None]) -> None:
        import multiprocessing
        from multiprocessing.connection import wait

        from ..isolation import death_message

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "backendiff.compare", "backendiff.sweep"])
        pending = list(payloads)
        running: dict[Any, tuple[Any, dict]] = {}      # receiver -> (process, payload)
        try:
            while pending or running:
                while pending and len(running) < self.workers:
                    payload = pending.pop(0)
                    receiver, sender = ctx.Pipe(duplex=False)
                    proc = ctx.Process(target=_cell_process, args=(sender, payload), daemon=False)
                    proc.start()
                    sender.close()
                    running[receiver] = (proc, payload)
                    progress(f"running {payload['model']} on {payload['spec']} ({len(running)} at once)")
                for receiver in wait(list(running)):
                    proc, payload = running[receiver]       # stays in `running` until joined
                    try:
                        record = receiver.recv()
                    except (EOFError, OSError):
                        proc.join()
                        message, sig = death_message(proc.exitcode, "the cell")
                        record = lost_record(payload, message, signal=sig, exitcode=proc.exitcode)
                    proc.join()
                    del running[receiver]
                    receiver.close()
                    on_done(record)
        finally:
            for receiver, (proc, _) in running.items():
                proc.kill()
                proc.join()
                receiver.close()


def needs_gpu(spec: str) -> bool:
    """Whether the spec's adapter says it runs on an NVIDIA GPU (TensorRT; ONNX Runtime on its
    CUDA or TensorRT provider)."""
    from ..registry import ALIASES, adapter_class
    from ..specs import parse_spec

    parsed = parse_spec(spec)
    return adapter_class(ALIASES.get(parsed.name, parsed.name)).needs_gpu(parsed)


def cell_resources(spec: str, threads: int, resources: dict) -> dict:
    """Ray task options of a cell: CPUs for its threads, a GPU for GPU backends, and custom
    resources declared for its spec or its backend name (the spec's entry wins)."""
    from ..registry import ALIASES
    from ..specs import parse_spec

    name = parse_spec(spec).name
    wants = dict(resources.get(ALIASES.get(name, name), {}))
    wants.update(resources.get(spec, {}))
    out = {"num_cpus": float(wants.pop("CPU", threads)), "num_gpus": float(wants.pop("GPU", 1 if needs_gpu(spec) else 0))}
    if wants:
        out["resources"] = {k: float(v) for k, v in wants.items()}
    return out


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast (one line) on a ``HOST:PORT`` nobody listens on: Ray itself retries for
    minutes. ``auto``, ``local`` and ``ray://`` (Ray Client) addresses are left to Ray."""
    import socket

    if address in ("auto", "local") or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise BadInput(f"--ray-address {address!r}: expected HOST:PORT of the head node (ray start --head), "
                       "auto, or ray://HOST:PORT")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise BadInput(f"--ray-address {address}: no Ray head node answers there ({e.strerror or e})") from None


class RayExecutor:
    """Tasks on a Ray cluster: ``address`` of an existing one (``ray start --head``), or a
    local Ray started for the run with ``workers`` CPU slots of ``threads`` each. Every cell
    asks for the resources of ``cell_resources``; a worker that dies or a node that is lost
    marks its cell ``lost``."""
    name = "ray"

    def __init__(self, address: str | None, workers: int, threads: int, resources: dict):
        self.address, self.workers, self.threads, self.resources = address, workers, threads, resources

    def _init(self):
        import logging
        import sys

        try:
            import ray
        except ModuleNotFoundError:
            raise BadInput("--executor ray needs Ray: pip install 'backendiff[ray]'") from None
        if ray.is_initialized():
            return ray, False
        # local workers import what the driver imports (a plugin next to the sweep file)
        paths = [p for p in sys.path if p and os.path.isdir(p) and "site-packages" not in p]
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)}}
        if self.address:
            check_ray_address(self.address)
        try:
            if self.address:
                ray.init(address=self.address, log_to_driver=False, runtime_env=env, logging_level=logging.ERROR)
            else:
                ray.init(num_cpus=self.workers * self.threads, include_dashboard=False, log_to_driver=False,
                         runtime_env=env, logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as e:
            auth = (" (a cluster with token authentication, the default of `ray start` since Ray 2.59, needs "
                    "RAY_AUTH_MODE=token here and its token in RAY_AUTH_TOKEN or ~/.ray/auth_token)"
                    if self.address and not os.environ.get("RAY_AUTH_MODE") else "")
            raise BadInput(f"--executor ray: cannot reach Ray at {self.address or 'a new local instance'}: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}{auth}") from None
        return ray, True

    def run(self, payloads: list[dict], on_done: Callable[[dict], None], progress: Callable[[str], None]) -> None:
        ray, started = self._init()
        try:
            remote = ray.remote(max_retries=0)(run_cell)
            refs = {}
            for payload in payloads:
                opts = cell_resources(payload["spec"], self.threads, self.resources)
                refs[remote.options(**opts).remote(payload)] = payload
            progress(f"{len(refs)} cells submitted to Ray ({ray.cluster_resources().get('CPU', 0):g} CPUs)")
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                payload = refs.pop(done[0])
                try:
                    record = ray.get(done[0])
                except Exception as e:  # noqa: BLE001 - WorkerCrashedError, node lost, ...
                    record = lost_record(payload, f"the Ray task was lost: {type(e).__name__}: "
                                                  f"{str(e).splitlines()[0] if str(e) else ''}".rstrip(": "))
                on_done(record)
        finally:
            if started:
                ray.shutdown()


