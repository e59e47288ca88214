"""offload installed from a wheel, used outside the checkout (issue 16): the wheel carries
what the commands need (manifests, CRD schemas, the locustfile, the backend shims), and
`offload deploy --dry-run`, `offload serve`, `offload perf` and `offload gridsim` work from an
empty folder with the installed entry point, their defaults relative to that folder.

The wheel is built from a copy of the checkout's files (no build/ or egg-info left in the
checkout, nothing stale from an earlier build) and installed with --no-deps into a fresh
virtual environment whose dependencies come from this interpreter's site-packages through a
.pth file: nothing is downloaded. A .pth line only adds a folder to sys.path; the .pth files
inside it (the checkout's editable finder among them) are not run, and the test checks that
every offload package is imported from the new environment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import FREE_PORTS, ROOT, ServeProcess, group_alive, stop_group

pytestmark = pytest.mark.slow

PACKAGES = ("offload", "offload_server", "offload_perf", "offload_training", "offload_deploy")
# Only what the build reads: the checkout's data (models, results, tests) stays behind.
NOT_BUILT = ("model_repository/", "tests/", "examples/", "perf/results/")


@dataclass
class Installed:
    venv: Path
    python: Path
    offload: Path  # the console script pip wrote
    wheel: Path
    empty: Path  # the working directory of every command: not the checkout
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.offload), *args], cwd=self.empty, env=self.env,
                              capture_output=True, text=True, timeout=timeout)


#: Outside a git checkout: what the build never reads (environments, caches, outputs).
UNBUILT_PARTS = {".git", ".venv", "build", "data", "__pycache__", ".pytest_cache",
                 ".ruff_cache", ".mypy_cache", ".hypothesis"}


def _source_files() -> list[str]:
    """The checkout's files as git knows them (tracked, or new and not ignored); without
    git, every file outside environments, caches and outputs."""
    if shutil.which("git") is not None and (ROOT / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], cwd=ROOT, capture_output=True,
                                timeout=60, check=True).stdout.decode().split("\0")
    else:
        listed = [str(path.relative_to(ROOT)) for path in ROOT.rglob("*")
                  if not UNBUILT_PARTS & set(path.relative_to(ROOT).parts)
                  and not any(part.endswith(".egg-info")
                              for part in path.relative_to(ROOT).parts)]
    return [name for name in listed if name and not name.startswith(NOT_BUILT)
            and (ROOT / name).is_file()]


def _dependency_paths() -> list[str]:
    """The site-packages folders on this interpreter's import path: where offload's
    dependencies are (a virtual environment inside the checkout, such as make's .venv,
    included); not the standard library, not the checkout's sources."""
    paths = []
    for entry in sys.path:
        if not entry or not Path(entry).is_dir():
            continue
        path = Path(entry).resolve()
        if {"site-packages", "dist-packages"} & set(path.parts) and str(path) not in paths:
            paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    source, dist, environment = work / "source", work / "dist", work / "venv"
    for name in _source_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "--no-index", "--disable-pip-version-check",
                            "-q", "-w", str(dist), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("offload-*.whl")

    venv.EnvBuilder(with_pip=False, symlinks=True).create(environment)
    python = environment / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, timeout=60, check=True)
    site = Path(purelib.stdout.strip())
    assert environment in site.parents
    (site / "offload-test-dependencies.pth").write_text("\n".join(_dependency_paths()) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    # --ignore-installed: the checkout's own (editable) offload, visible through the .pth,
    # is neither consulted nor touched.
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index",
                              "--ignore-installed", "--disable-pip-version-check", "-q",
                              str(wheel)], capture_output=True, text=True, timeout=300, env=env)
    assert install.returncode == 0, install.stdout + install.stderr
    empty = work / "empty"
    empty.mkdir()
    return Installed(environment, python, environment / "bin" / "offload", wheel, empty, env)


def test_the_wheel_carries_the_manifests_schemas_locustfile_and_shims(installed):
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    manifests = {str(p.relative_to(ROOT / "k8s")) for p in (ROOT / "k8s").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
    assert {f"offload_deploy/{m}" for m in manifests} <= names
    for needed in ("offload_deploy/overlays/gpu/kustomization.yaml",
                   "offload_deploy/base/model-repository/loader-pod.yaml",
                   "offload_deploy/components/jwt-auth/envoy.yaml",
                   "offload_deploy/locust/locustfile.py",
                   "offload_deploy/schemas/keda.sh_v1alpha1_scaledobject.json",
                   "offload_server/backend_shims/onnxruntime/model.py"):
        assert needed in names
    assert not any(n.startswith(("perf/", "k8s/", "tests/")) for n in names)


def test_every_package_is_imported_from_the_new_environment(installed):
    code = ("import importlib, sys\n"
            f"for name in {PACKAGES!r}:\n"
            "    print(name, importlib.import_module(name).__file__)\n"
            "from offload_deploy import manifests_dir\n"
            "from offload_perf.load import locustfile\n"
            "print('manifests', manifests_dir())\n"
            "print('locustfile', locustfile())\n")
    result = subprocess.run([str(installed.python), "-c", code], cwd=installed.empty,
                            env=installed.env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    found = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert set(found) == {*PACKAGES, "manifests", "locustfile"}
    for name, path in found.items():
        assert installed.venv in Path(path).parents, (name, path)
    assert Path(found["locustfile"]).is_file()


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl (with kustomize) is not "
                    "installed: offload deploy renders with it")
def test_installed_deploy_dry_run_from_an_empty_folder(installed, tmp_path):
    repository = tmp_path / "models"
    shutil.copytree(ROOT / "model_repository" / "jet_tagger", repository / "jet_tagger")
    result = installed.run("deploy", "--dry-run", "--repository", str(repository),
                           timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# plan:" in result.stdout
    assert "kind: Deployment" in result.stdout
    assert "name: triton" in result.stdout
    undeployable = installed.run("deploy", "--dry-run", "--overlay", "nope", timeout=60)
    assert undeployable.returncode == 1
    assert str(installed.venv) in undeployable.stderr  # it looked where it is installed


def _serve(installed: Installed, repository: Path) -> ServeProcess:
    """The installed `offload serve`, run from the empty folder."""
    return ServeProcess(command=[str(installed.offload), "serve", "--model-repository",
                                 str(repository), *FREE_PORTS],
                        cwd=installed.empty, env=installed.env)


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command and cmdline.parent.name != str(os.getpid()):
            found.append(f"{cmdline.parent.name}: {command}")
    return found


def test_installed_serve_perf_and_gridsim_from_an_empty_folder(installed, tmp_path):
    repository = tmp_path / "models"
    shutil.copytree(ROOT / "model_repository" / "jet_tagger", repository / "jet_tagger",
                    ignore=shutil.ignore_patterns("*.png", "*.md"))
    serve = _serve(installed, repository)
    triton_pid = None
    try:
        triton_pid = int(serve.wait_for(r"tritonserver ready \(pid (\d+)", timeout=240).group(1))
        grpc_url = serve.wait_for(r"gRPC\s+(\S+)").group(1)
        assert grpc_url.startswith("127.0.0.1:")
        serve.wait_for(r"jet_tagger .*READY", timeout=60)

        # `offload perf` with its default --output: perf/results/sweeps under the cwd
        perf = installed.run("perf", "jet_tagger", "--server", grpc_url, "--concurrency", "1",
                             "--batch", "1", "--window", "0.2", "--stability", "50",
                             timeout=240)
        assert perf.returncode == 0, perf.stdout + perf.stderr
        assert (installed.empty / "perf" / "results" / "sweeps" / "jet_tagger.csv").is_file()

        # `offload gridsim` against that server, its default --output under the cwd too
        gridsim = installed.run("gridsim", "--server", grpc_url, "--repository",
                                str(repository), "--models", "jet_tagger", "--workers", "1",
                                "--duration", "1", "--warmup", "0.3", "--cpu-ms", "0.5",
                                timeout=240)
        assert gridsim.returncode == 0, gridsim.stdout + gridsim.stderr
        record = json.loads((installed.empty / "perf" / "results" / "gridsim.json").read_text())
        assert record["complete"]
        assert {row["mode"] for row in record["rows"]} == {"in_process", "offloaded"}

        serve.process.send_signal(signal.SIGINT)
        assert serve.process.wait(timeout=60) == 0, serve.output()
        assert "stopped." in serve.output()
        assert not group_alive(triton_pid)
        assert not group_alive(serve.process.pid)
        assert _processes_mentioning(str(repository)) == []
        assert _processes_mentioning(str(installed.venv)) == []
    finally:
        if serve.process.poll() is None:
            os.killpg(serve.process.pid, signal.SIGKILL)
            serve.process.wait(timeout=30)
        if triton_pid:
            stop_group(triton_pid)
