"""Run notebooks top to bottom in this Python's kernel; fail on the first cell error.

    python scripts/execute_notebook.py [--timeout SECONDS] NOTEBOOK...

Outputs are not compared and the notebook file is not changed. Cells tagged
`raises-exception` may raise, as in nbval and nbclient. `make nbval` uses this for the
LABKIT_FOREIGN=1 run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

CURRENT_ENV = "labkit-current-env"


class CurrentEnvKernelSpecs(KernelSpecManager):
    """Every notebook runs in an ipykernel of this very Python (the venv's), whatever
    kernelspecs the user has installed elsewhere."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name == CURRENT_ENV:
            return KernelSpec(
                # absolute: the kernel starts in the notebook's folder, and sys.executable
                # is relative when this script was found through a relative PATH entry
                argv=[os.path.abspath(sys.executable), "-m", "ipykernel_launcher", "-f",
                      "{connection_file}"],
                display_name="Python 3 (labkit)", language="python")
        return super().get_kernel_spec(kernel_name)


def execute(path: Path, timeout: int) -> bool:
    nb = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name=CURRENT_ENV, kernel_spec_manager=CurrentEnvKernelSpecs())
    client = NotebookClient(nb, km=km, timeout=timeout, kernel_name=CURRENT_ENV,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.monotonic()
    try:
        client.execute()
    except CellExecutionError as exc:
        print(f"FAILED {path}: a cell raised an error\n{exc}", file=sys.stderr)
        return False
    finally:  # the kernel is ours (we passed km), so nbclient leaves it running
        if client.kc is not None:
            client.kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=False)
    code_cells = sum(cell.cell_type == "code" for cell in nb.cells)
    print(f"ok {path}: {code_cells} code cells ran in {time.monotonic() - start:.1f} s")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=int, default=600, help="seconds a cell may take")
    parser.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args(argv)
    results = [execute(nb, args.timeout) for nb in args.notebooks]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
