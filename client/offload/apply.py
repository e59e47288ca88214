"""`offload apply`: the jet models over the fat jets of PFNano ROOT files, to friend trees.

    offload apply nano_1.root nano_2.root --models jet_tagger jet_energy_regression \\
        --output scores/ [--server HOST:PORT] [--tree Events] [--step-size 20MB]
        [--workers N | --scheduler ADDRESS]

For each input, `DIR/<input name>` gets a TTree `Events` with one entry per input entry:
``nFatJet`` and, per model output, ``FatJet_<output>`` (e.g. ``FatJet_top_probability``,
``FatJet_pt_correction``), one value per fat jet in the input's ``FatJet`` order: a friend
tree of the input. The inputs are read in chunks of `--step-size` (entries, or a size such
as ``20MB`` of the branches read), the candidates of each jet gathered through the PFNano
link table (:mod:`offload.physics.pfnano`), the models' inputs computed by
:mod:`offload.physics.jets` and sent with the client's pipelining (both models' requests in
flight together; serially, the next chunk is read while the server works on this one).

`--workers N` runs the chunks on a dask.distributed LocalCluster of N worker processes (one
thread each), `--scheduler ADDRESS` on an existing Dask cluster (e.g. dask-jobqueue's
HTCondorCluster or SLURMCluster: pass its ``scheduler_address``); the workers need offload
installed and must reach the servers. The driver writes the outputs in entry order, so the
result is the same, value for value, whatever runs the chunks.

**Nothing lost, nothing half-written.** An output is written under a hidden temporary name
(``.NAME.<pid>.partial``) and renamed to its final name only when every chunk is in and the
file is closed; on any failure the temporary file is removed. A final name therefore always
holds a complete output; it records what it was made from (the input's UUID and entry
count, the tree and the models, in the TObjString ``offload_provenance``). **Rerunning the
same command finishes the job:** outputs that are complete for the same input and models
are skipped, the rest are made. An output for another input or other models is refused
(``--overwrite`` replaces it).

Exit status 0 when every output is complete; 1 with a one-line message on any failure
(a file that is missing or not ROOT, an absent tree or branch, a link table or pdgId the
models cannot take, an unreachable server, a Dask worker that died); 2 for bad arguments.
Events without fat jets get empty entries; a jet with more than 128 candidates keeps its
128 highest-pt ones, as the models were trained (the summary counts such jets).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

import offload
from offload.endpoints import SERVERS_VARIABLE
from offload.errors import InvalidInputError, OffloadError
from offload.physics import jets as pj
from offload.physics import pfnano

DEFAULT_MODELS = ("jet_tagger", "jet_energy_regression")
DEFAULT_STEP = "20MB"
PROVENANCE = "offload_provenance"  # the TObjString naming what an output was made from
COUNTER = f"n{pfnano.JET_COLLECTION}"


class ApplyError(OffloadError):
    """`offload apply` could not finish; the message names the file and entries."""


# ---------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    """What every chunk needs; only strings and numbers, so it travels to Dask workers."""

    servers: tuple[str, ...]
    models: tuple[str, ...]
    outputs: tuple[tuple[str, str], ...]  # (model, output name) in branch order
    tree: str = "Events"
    timeout: float = 120.0
    tls_ca: str | None = None
    tls: bool = False

    def client_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"timeout": self.timeout}
        if self.tls or self.tls_ca:
            from offload.endpoints import TLS

            options["tls"] = TLS(root_certificates=self.tls_ca)
        return options

    @property
    def branches(self) -> list[str]:
        return [f"{pfnano.JET_COLLECTION}_{name}" for _, name in self.outputs]


@dataclass(frozen=True)
class Chunk:
    path: str
    start: int
    stop: int

    def describe(self) -> str:
        return f"{self.path} entries {self.start}-{self.stop - 1}"


@dataclass
class ChunkResult:
    """Per-jet model outputs of one chunk, and its jets per event."""

    chunk: Chunk
    jets_per_event: np.ndarray
    values: dict[str, np.ndarray]  # output branch -> float per jet
    truncated: int = 0

    @property
    def n_jets(self) -> int:
        return int(self.jets_per_event.sum())


@dataclass
class InputFile:
    path: Path
    output: Path
    entries: int
    uuid: str
    chunks: list[Chunk] = field(default_factory=list)

    def provenance(self, settings: Settings) -> dict[str, Any]:
        return {"input": str(self.path), "input_uuid": self.uuid, "entries": self.entries,
                "tree": settings.tree, "models": sorted(settings.models),
                "branches": [COUNTER, *settings.branches],
                "offload_version": offload.__version__}


# ---------------------------------------------------------------------------- one chunk
def read_chunk(settings: Settings, chunk: Chunk) -> tuple[pfnano.Gathered, dict]:
    """Read a chunk's PFNano branches and compute the models' inputs."""
    try:
        with uproot.open(chunk.path) as file:
            arrays = file[settings.tree].arrays(list(pfnano.BRANCHES), entry_start=chunk.start,
                                                entry_stop=chunk.stop, library="ak")
    except Exception as error:  # a damaged file: uproot's and zlib's own errors
        raise ApplyError(f"{chunk.describe()}: cannot read: {type(error).__name__}: "
                         f"{error}") from None
    try:
        gathered = pfnano.gather(arrays, first_entry=chunk.start)  # its errors name entries
    except OffloadError as error:
        raise ApplyError(f"{chunk.path}: {error}") from None
    try:
        inputs = gathered.inputs(settings.models) if gathered.n_jets else {}
    except OffloadError as error:
        raise ApplyError(f"{chunk.describe()}: {error}") from None
    return gathered, inputs


def send_chunk(settings: Settings, inputs: dict) -> dict[str, Any]:
    """Both models' requests in flight together (futures), on this process's client."""
    from offload import dask as offload_dask

    options = settings.client_options()
    return {m: offload_dask.model(m, settings.servers, **options).submit(inputs[m])
            for m in settings.models if m in inputs}


def collect_chunk(settings: Settings, chunk: Chunk, gathered: pfnano.Gathered,
                  futures: dict[str, Any]) -> ChunkResult:
    values = {}
    try:
        results = {m: f.result() for m, f in futures.items()}
    except OffloadError as error:
        raise ApplyError(f"{chunk.describe()}: {error}") from None
    for model, name in settings.outputs:
        branch = f"{pfnano.JET_COLLECTION}_{name}"
        if model in results:
            values[branch] = np.asarray(results[model][name], np.float32).reshape(-1)
        else:  # no jets in the chunk
            values[branch] = np.zeros(0, np.float32)
    return ChunkResult(chunk, gathered.jets_per_event, values, gathered.truncated)


def process_chunk(settings: Settings, chunk: Chunk) -> ChunkResult:
    """Read, compute the inputs, infer: one chunk, start to end (a Dask task)."""
    gathered, inputs = read_chunk(settings, chunk)
    return collect_chunk(settings, chunk, gathered, send_chunk(settings, inputs))


# ---------------------------------------------------------------------------- outputs
class OutputWriter:
    """One output file: written under a temporary name, renamed when complete."""

    def __init__(self, source: InputFile, settings: Settings) -> None:
        self.source = source
        self.settings = settings
        self.final = source.output
        self.partial = self.final.with_name(f".{self.final.name}.{os.getpid()}.partial")
        self.written = 0
        try:
            self._file = uproot.recreate(self.partial)
        except OSError as error:
            raise ApplyError(f"{self.final.parent}: cannot write: {error}") from None
        types = {pfnano.JET_COLLECTION: ak.types.ListType(ak.types.RecordType(
            [ak.types.NumpyType("float32") for _ in settings.outputs],
            [name for _, name in settings.outputs]))}
        self._tree = self._file.mktree(settings.tree, types)

    def write(self, result: ChunkResult) -> None:
        if result.chunk.start != self.written:
            raise ApplyError(f"{result.chunk.describe()}: out of order (internal error)")
        fields = {name: ak.unflatten(result.values[f"{pfnano.JET_COLLECTION}_{name}"],
                                     result.jets_per_event)
                  for _, name in self.settings.outputs}
        self._tree.extend({pfnano.JET_COLLECTION: ak.zip(fields)})
        self.written = result.chunk.stop

    def finish(self) -> None:
        if self.written != self.source.entries:
            raise ApplyError(f"{self.final}: {self.written} of {self.source.entries} entries "
                             "written (internal error)")
        self._file[PROVENANCE] = json.dumps(self.source.provenance(self.settings))
        self._file.close()
        with Path(self.partial).open("rb") as handle:
            os.fsync(handle.fileno())
        Path(self.partial).replace(self.final)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()


def existing_output(source: InputFile, settings: Settings) -> str | None:
    """None if no output exists yet; "complete" if it holds this input's results for these
    models; else a reason why it does not."""
    if not source.output.exists():
        return None
    try:
        with uproot.open(source.output) as done:
            record = json.loads(str(done[PROVENANCE]))
    except Exception:
        return "it is not an output of offload apply (no readable provenance)"
    wanted = source.provenance(settings)
    differs = [key for key in ("input_uuid", "entries", "tree", "models")
               if record.get(key) != wanted[key]]
    if not differs:
        return "complete"
    return (f"it was made from {record.get('input')} (uuid {record.get('input_uuid')}, "
            f"{record.get('entries')} entries, tree {record.get('tree')!r}, models "
            f"{record.get('models')}); differs in {', '.join(differs)}")


def remove_stale_partials(output: Path) -> None:
    """Temporary files of earlier runs of this output whose process is gone."""
    for partial in output.parent.glob(f".{output.name}.*.partial"):
        pid = partial.name[len(output.name) + 2:-len(".partial")]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()


# ---------------------------------------------------------------------------- inputs
def open_input(path: Path, output_dir: Path, settings: Settings, step: str | int) -> InputFile:
    """Check one input (a ROOT file, the tree, the branches) and plan its chunks."""
    if not path.is_file():
        raise ApplyError(f"{path}: no such file")
    try:
        with Path(path).open("rb") as handle:
            magic = handle.read(4)
    except OSError as error:
        raise ApplyError(f"{path}: cannot read: {error}") from None
    if magic != b"root":
        raise ApplyError(f"{path}: not a ROOT file (it does not start with ROOT's 'root' "
                         f"signature but with {magic!r})")
    try:
        file = uproot.open(path)
    except Exception as error:
        raise ApplyError(f"{path}: not a ROOT file ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    with file:
        try:
            tree = file[settings.tree]
        except Exception:
            trees = sorted({key.split(";")[0] for key, cls in file.classnames().items()
                            if cls in ("TTree", "ROOT::RNTuple")})
            raise ApplyError(f"{path}: no tree {settings.tree!r} (trees: "
                             f"{', '.join(trees) or 'none'}; choose one with --tree)") from None
        if not hasattr(tree, "keys"):
            raise ApplyError(f"{path}: {settings.tree!r} is a {type(tree).__name__}, not a TTree")
        missing = [b for b in pfnano.BRANCHES if b not in tree]
        if missing:
            raise ApplyError(f"{path}: tree {settings.tree!r} lacks the PFNano branch(es) "
                             f"{', '.join(missing)}")
        entries = int(tree.num_entries)
        if isinstance(step, int):
            per_chunk = step
        else:
            per_chunk = tree.num_entries_for(step, filter_name=list(pfnano.BRANCHES))
        per_chunk = max(1, int(per_chunk))
        source = InputFile(path, output_dir / path.name, entries, str(file.file.uuid))
    source.chunks = [Chunk(str(path), start, min(start + per_chunk, entries))
                     for start in range(0, entries, per_chunk)]
    return source


def parse_step(text: str) -> str | int:
    text = text.strip().replace(" ", "")
    if text.isdigit() and int(text) > 0:
        return int(text)
    number = text.rstrip("kKMGTiBb")
    try:
        if float(number) <= 0 or number == text:
            raise ValueError
    except ValueError:
        raise InvalidInputError(f"--step-size takes a number of entries or a size such as "
                                f"20MB, got {text!r}") from None
    return text.upper().replace("IB", "iB")


# ---------------------------------------------------------------------------- drivers
class Progress:
    """A tqdm bar over entries (stderr), with jets/s; silent where disabled."""

    def __init__(self, total: int, enabled: bool | None) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="event", desc="offload apply", disable=(
            not sys.stderr.isatty() if enabled is None else not enabled), file=sys.stderr,
            smoothing=0.1, dynamic_ncols=True)
        self.jets = 0
        self.started = time.perf_counter()

    def update(self, result: ChunkResult) -> None:
        self.jets += result.n_jets
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix_str(f"{self.jets / elapsed:,.0f} jets/s", refresh=False)
        self.bar.update(result.chunk.stop - result.chunk.start)

    def close(self) -> None:
        self.bar.close()


def serial_results(settings: Settings, chunks: Sequence[Chunk]) -> Iterator[ChunkResult]:
    """Chunk results in order, computed here: the next chunk is read and its inputs
    computed while the server works on the previous one."""
    pending: deque[tuple[Chunk, pfnano.Gathered, dict]] = deque()
    for chunk in chunks:
        gathered, inputs = read_chunk(settings, chunk)
        futures = send_chunk(settings, inputs)
        pending.append((chunk, gathered, futures))
        if len(pending) > 1:
            yield collect_chunk(settings, *pending.popleft())
    while pending:
        yield collect_chunk(settings, *pending.popleft())


def dask_results(client: Any, settings: Settings, chunks: Sequence[Chunk],
                 window: int) -> Iterator[ChunkResult]:
    """Chunk results in order, computed by the Dask cluster behind `client`, at most
    `window` chunks submitted ahead of the one being written."""
    from distributed import KilledWorker

    running: deque[tuple[Chunk, Any]] = deque()
    todo = iter(chunks)
    try:
        while True:
            while len(running) < window:
                chunk = next(todo, None)
                if chunk is None:
                    break
                running.append((chunk, client.submit(process_chunk, settings, chunk,
                                                     pure=False, retries=0)))
            if not running:
                return
            chunk, future = running.popleft()
            try:
                yield future.result()
            except KilledWorker as error:
                raise ApplyError(f"{chunk.describe()}: a Dask worker died while running it "
                                 f"(the scheduler gave up on the task: {error})") from None
            except OffloadError:
                raise
            except Exception as error:
                raise ApplyError(f"{chunk.describe()}: failed on a Dask worker: "
                                 f"{type(error).__name__}: {error}") from None
    finally:
        for _, future in running:
            future.cancel()


@contextlib.contextmanager
def dask_client(workers: int | None, scheduler: str | None) -> Iterator[Any]:
    try:
        import distributed
    except ImportError:  # pragma: no cover - depends on the install
        raise ApplyError("--workers and --scheduler need dask.distributed: "
                         "pip install 'offload[hep]'") from None
    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout="20s")
        except Exception as error:
            raise ApplyError(f"cannot reach the Dask scheduler at {scheduler}: "
                             f"{type(error).__name__}: {error}") from None
        with client:
            yield client
        return
    import logging

    import dask

    # Dask's own INFO lines (scheduler, nannies) would bury the progress bar and the result.
    for name in ("distributed", "distributed.scheduler", "distributed.nanny",
                 "distributed.core", "distributed.http.proxy", "distributed.worker"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # One thread per worker process, as a grid slot; a chunk whose worker dies is retried
    # once on another worker, then the run stops (allowed-failures).
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}), \
            distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                     dashboard_address=None, host="127.0.0.1",
                                     silence_logs=40) as cluster, \
            distributed.Client(cluster) as client:
        yield client


def apply_files(paths: Sequence[Path], output_dir: Path, settings: Settings, *,
                step: str | int = DEFAULT_STEP, workers: int | None = None,
                scheduler: str | None = None, overwrite: bool = False,
                progress: bool | None = False,
                report: Callable[[str], None] = lambda _line: None) -> dict[str, Any]:
    """Run the models over `paths` into `output_dir` (see the module doc). Returns a
    summary: files made and skipped, entries, jets, jets with candidates cut at 128, wall
    seconds. Raises :class:`ApplyError` (or another OffloadError) on failure, leaving no
    incomplete output under a final name."""
    names = [p.name for p in paths]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ApplyError(f"inputs with the same file name would write the same output: "
                         f"{', '.join(twice)}")
    sources = [open_input(Path(p), output_dir, settings, step) for p in paths]
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ApplyError(f"{output_dir}: cannot create the output folder: {error}") from None
    todo, skipped = [], []
    for source in sources:
        if source.output.resolve() == source.path.resolve():
            raise ApplyError(f"{source.path}: the output would replace the input; choose "
                             "another --output")
        state = existing_output(source, settings)
        if state == "complete" and not overwrite:
            skipped.append(source)
            report(f"{source.output}: complete, skipped")
        elif state is not None and state != "complete" and not overwrite:
            raise ApplyError(f"{source.output} exists and {state}; remove it or pass "
                             "--overwrite")
        else:
            todo.append(source)
    summary = {"files": len(todo), "skipped": len(skipped), "entries": 0, "jets": 0,
               "truncated_jets": 0, "seconds": 0.0}
    chunks = [chunk for source in todo for chunk in source.chunks]
    with contextlib.ExitStack() as stack:
        if workers or scheduler:
            client = stack.enter_context(dask_client(workers, scheduler))
            threads = sum(client.nthreads().values()) or 1
            results = dask_results(client, settings, chunks, window=max(4, 2 * threads))
        else:
            results = serial_results(settings, chunks)
        started = time.perf_counter()  # the cluster's start-up is not the files' time
        stack.callback(getattr(results, "close", lambda: None))
        bar = Progress(sum(s.entries for s in todo), progress)
        stack.callback(bar.close)
        for source in todo:
            remove_stale_partials(source.output)
            writer = OutputWriter(source, settings)
            try:
                for _ in source.chunks:
                    result = next(results)
                    writer.write(result)
                    bar.update(result)
                    summary["jets"] += result.n_jets
                    summary["truncated_jets"] += result.truncated
                writer.finish()
            except OSError as error:
                writer.abort()
                raise ApplyError(f"{source.output}: cannot write: {error}") from None
            except BaseException:
                writer.abort()
                raise
            summary["entries"] += source.entries
            report(f"{source.output}: {source.entries} events")
    summary["seconds"] = time.perf_counter() - started
    return summary


# ---------------------------------------------------------------------------- the CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT.root",
                        help="PFNano-like ROOT files (FatJet_*, PFCands_*, FatJetPFCands_*)")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="MODEL",
                        help=f"jet models to run (default: {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--output", "-o", type=Path, required=True, metavar="DIR",
                        help="folder for the outputs, one ROOT file per input, same name")
    parser.add_argument("--server", action="append", dest="servers", metavar="HOST:PORT",
                        help=f"Triton gRPC endpoint (repeatable; default: ${SERVERS_VARIABLE}, "
                             "else 127.0.0.1:8001)")
    parser.add_argument("--tree", default="Events", help="the events' TTree (default Events)")
    parser.add_argument("--step-size", default=DEFAULT_STEP, metavar="N|SIZE",
                        help="entries per chunk, or a size of the branches read such as "
                             f"100MB (default {DEFAULT_STEP})")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N",
                       help="run the chunks on a local Dask cluster of N worker processes")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run the chunks on an existing Dask cluster (tcp://host:8786)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds for one chunk's requests, retries included")
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's CAs")
    parser.add_argument("--tls-ca", metavar="PEM", help="use TLS, trusting this CA bundle")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace outputs made from other inputs or models")
    bar = parser.add_mutually_exclusive_group()
    bar.add_argument("--progress", action="store_true", default=None,
                     help="show a progress bar (default: when stderr is a terminal)")
    bar.add_argument("--no-progress", action="store_false", dest="progress")


def model_outputs(servers: Sequence[str], models: Sequence[str],
                  options: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """(model, output) pairs from the server's metadata; checks the server is reachable,
    every model is a jet model it serves, and every output is one value per jet."""
    unknown = [m for m in models if m not in pj.MODEL_INPUTS]
    if unknown:
        raise ApplyError(f"offload apply computes the inputs of {', '.join(pj.MODEL_INPUTS)}; "
                         f"it cannot feed {', '.join(unknown)}")
    from offload import dask as offload_dask

    pairs: list[tuple[str, str]] = []
    for name in models:
        try:
            model = offload_dask.model(name, servers, **options)
        except offload.ServerUnavailableError as error:
            raise ApplyError(f"cannot reach the server at {', '.join(servers)}: {error}") \
                from None
        if model.max_batch_size <= 0:
            raise ApplyError(f"model '{name}' does not batch (max_batch_size 0): offload "
                             "apply sends many jets per request")
        for tensor in model.outputs:
            per_jet = tensor.shape[1:]
            if int(np.prod(per_jet)) != 1:
                raise ApplyError(f"model '{name}' output '{tensor.name}' has {list(per_jet)} "
                                 "values per jet; offload apply writes one per jet")
            pairs.append((name, tensor.name))
    names = [n for _, n in pairs]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ApplyError(f"models {list(models)} share output name(s) {clash}: each output "
                         "becomes one FatJet_<output> branch")
    return tuple(pairs)


def run(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise InvalidInputError(f"--workers needs at least 1, got {args.workers}")
    step = parse_step(args.step_size)
    servers = tuple(args.servers or [os.environ.get(SERVERS_VARIABLE) or "127.0.0.1:8001"])
    models = tuple(dict.fromkeys(args.models))
    probe = Settings(servers, models, (), args.tree, args.timeout, args.tls_ca, args.tls)
    settings = Settings(servers, models,
                        model_outputs(servers, models, probe.client_options()),
                        args.tree, args.timeout, args.tls_ca, args.tls)
    summary = apply_files(args.inputs, args.output, settings, step=step, workers=args.workers,
                          scheduler=args.scheduler, overwrite=args.overwrite,
                          progress=args.progress,
                          report=lambda line: print(line, file=sys.stderr))
    rate = summary["jets"] / summary["seconds"] if summary["seconds"] > 0 else 0.0
    line = (f"offload apply: {summary['files']} file(s) written, {summary['skipped']} already "
            f"complete; {summary['entries']} events, {summary['jets']} jets in "
            f"{summary['seconds']:.1f} s ({rate:,.0f} jets/s)")
    if summary["truncated_jets"]:
        line += (f"; {summary['truncated_jets']} jet(s) had more than {pj.MAX_CONSTITUENTS} "
                 f"candidates (their {pj.MAX_CONSTITUENTS} highest-pt ones were used)")
    print(line)
    return 0
