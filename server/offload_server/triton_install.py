"""Where the `tritonserver` bundled in the `nvidia-pytriton` wheel lives, and the backend
folder it needs on a CPU machine.

The wheel ships the server binary, the Python backend and one Python-backend stub per
Python version. Triton resolves a model's `backend: "B"` as `<backends>/B/libtriton_B.so`
and, failing that, as a Python-based backend `<backends>/B/model.py`; the wheel has no
onnxruntime, pytorch or tensorflow library, so the project's Python-based backends of
those names serve the same repository that the NGC image serves natively.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from offload_server.errors import TritonNotInstalledError

#: Names of the project's Python-based CPU backends (each a folder in backend_shims/).
CPU_BACKENDS = ("onnxruntime", "pytorch", "tensorflow")

_INSTALL_HINT = "install the server side with: pip install 'offload[server]' (or run `make serve`)"


@dataclass(frozen=True)
class TritonInstall:
    """Paths inside an installed `nvidia-pytriton` wheel."""

    root: Path  # .../site-packages/pytriton/tritonserver

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        return self.root / "backends" / "python"

    def stub(self, python_version: str | None = None) -> Path:
        version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = self.root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            have = sorted(p.name for p in (self.root / "python_backend_stubs").iterdir())
            raise TritonNotInstalledError(
                f"nvidia-pytriton has no Python-backend stub for Python {version} "
                f"(it has {', '.join(have)}); run offload under one of those Python versions"
            )
        return stub

    @property
    def library_dirs(self) -> list[Path]:
        """Folders of the shared libraries the wheel vendors (auditwheel's `*.libs`)."""
        site = self.root.parent.parent
        return [p for p in (site / "nvidia_pytriton.libs", self.root / "lib") if p.is_dir()]


def find_triton() -> TritonInstall:
    """Locate the bundled `tritonserver` without importing pytriton (slow, and unneeded)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalledError(f"nvidia-pytriton is not installed; {_INSTALL_HINT}")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    install = TritonInstall(root)
    for needed in (install.binary, install.python_backend / "libtriton_python.so"):
        if not needed.is_file():
            raise TritonNotInstalledError(
                f"nvidia-pytriton is installed at {root.parent} but {needed} is missing; "
                f"reinstall it: pip install --force-reinstall nvidia-pytriton==0.7.0"
            )
    if not os.access(install.binary, os.X_OK):
        raise TritonNotInstalledError(
            f"{install.binary} is not executable; reinstall nvidia-pytriton")
    return install


def assemble_backends(install: TritonInstall, target: Path) -> Path:
    """Build a Triton backend folder at `target`: the Python backend with the stub for the
    running Python, plus the project's CPU backends.

    Hard links where the file system allows, copies otherwise: Triton refuses a backend
    library whose real path (symbolic links resolved) lies outside the backend folder.
    """
    target.mkdir(parents=True, exist_ok=True)
    python_dir = target / "python"
    python_dir.mkdir(exist_ok=True)
    for source in install.python_backend.iterdir():
        if source.is_file():
            _link(source, python_dir / source.name)
    _link(install.stub(), python_dir / "triton_python_backend_stub")
    shims = Path(__file__).parent / "backend_shims"
    for name in CPU_BACKENDS:
        (target / name).mkdir(exist_ok=True)
        _link(shims / name / "model.py", target / name / "model.py")
    return target


def _link(source: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    try:
        os.link(source.resolve(), link)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source.resolve(), link)
