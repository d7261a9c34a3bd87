"""`--cluster ADDRESS`: the cells on a Dask distributed cluster whose workers are KVM hosts with
pvhboot installed (``pip install pvhboot[cluster]``).

The files a cell needs (kernel, extracted vmlinux, initramfs) travel with the tasks: each distinct
file is scattered once to the workers and handed to every task that boots it; the worker writes
them into a private temporary directory and boots the cell exactly as the local pool does (a child
process, :func:`pvhboot.compare.runner.run_cell`), so the results are the same fingerprints.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile

from ..errors import ConfigError
from .cells import Cell


def boot_cell_on_worker(cell_json: dict, blobs: dict[str, bytes]) -> dict:
    """Runs on a Dask worker: ``blobs`` maps the spec's file fields (kernel, initrd) to contents."""
    from .runner import run_cell

    cell = Cell.from_json(cell_json)
    with tempfile.TemporaryDirectory(prefix="pvhboot-cell-") as tmp:
        paths = {}
        for name, data in blobs.items():
            paths[name] = os.path.join(tmp, name)
            with open(paths[name], "wb") as f:
                f.write(data)
        cell = dataclasses.replace(cell, **paths)
        result = run_cell(cell)
    result["worker_host"] = os.uname().nodename
    return result


def _connect(address: str):
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError("--cluster needs Dask distributed (pip install 'pvhboot[cluster]')") from None
    try:
        return Client(address, timeout=15)
    except (OSError, TimeoutError, ValueError) as e:
        raise ConfigError(f"--cluster {address}: cannot connect: {e}") from None


def run_cells_on_cluster(address_or_client, cells: list[Cell], progress=None) -> list[dict]:
    """Results in the order of ``cells``.  ``address_or_client``: a scheduler address or a Client."""
    from distributed import as_completed

    own = isinstance(address_or_client, str)
    client = _connect(address_or_client) if own else address_or_client
    try:
        scattered: dict[str, object] = {}

        def blob(path: str):
            if path not in scattered:
                with open(path, "rb") as f:
                    scattered[path] = client.scatter(f.read(), broadcast=True, hash=False)
            return scattered[path]

        futures = {}
        for i, cell in enumerate(cells):
            blobs = {"kernel": blob(cell.kernel)}
            if cell.initrd:
                blobs["initrd"] = blob(cell.initrd)
            fut = client.submit(boot_cell_on_worker, cell.to_json(), blobs, pure=False,
                                key=f"pvhboot-cell-{i}-{os.getpid()}-{id(cells)}")
            futures[fut] = i
        results: list[dict | None] = [None] * len(cells)
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                results[i] = fut.result()
            except Exception as e:  # a worker lost or a task error: this cell's result, not the run's
                results[i] = {"status": "error", "detail": f"cluster task failed: {type(e).__name__}: {e}"}
            if progress is not None:
                progress(cells[i], results[i])
        return results
    finally:
        if own:
            client.close()
