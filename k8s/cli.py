"""`offload deploy`, `offload deploy status`, `offload undeploy` (and `make deploy`).

    offload deploy [--overlay gpu|cpu|dev] [--namespace NS] [--repository DIR] [--dry-run]
    offload deploy status [--namespace NS]
    offload undeploy [--namespace NS]          (= offload deploy delete)
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from offload_deploy.errors import DeployError
from offload_deploy.plan import is_loader, make_plan
from offload_deploy.render import BASE_NAMESPACE, OVERLAYS, render, to_yaml

DIGEST_ANNOTATION = "offload.dev/model-repository-digest"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=["apply", "status", "delete"],
                        default="apply", help="apply (default), status, or delete (= undeploy)")
    parser.add_argument("--overlay", default="gpu",
                        help=f"one of {', '.join(OVERLAYS)} (default gpu) or a kustomization "
                             "directory")
    _common(parser)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"),
                        help="the model repository to upload (default model_repository)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and the manifests; no cluster needed")
    parser.add_argument("--timeout", type=float, default=1200,
                        help="seconds to wait for the rollout (default 1200)")


def add_undeploy_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", "-n", default=BASE_NAMESPACE,
                        help=f"namespace (default {BASE_NAMESPACE})")
    parser.add_argument("--context", default=None,
                        help="kubeconfig context (default: the current one)")
    parser.add_argument("--keep-namespace", action="store_true",
                        help="undeploy: leave the namespace itself in place")


def run(args: argparse.Namespace) -> int:
    if args.action == "status":
        return run_status(args)
    if args.action == "delete":
        return run_undeploy(args)
    return run_apply(args)


def _console():
    from rich.console import Console

    return Console(highlight=False)


def run_apply(args: argparse.Namespace) -> int:
    objects = render(args.overlay, args.namespace)
    payload = None
    loader = next((o for o in objects if is_loader(o)), None)
    if loader is not None:
        from offload_deploy.cluster import tar_repository

        if not args.repository.is_dir():
            raise DeployError(f"model repository {args.repository} is not a directory "
                              "(--repository DIR)")
        payload = tar_repository(args.repository)
        # A new repository content means new Triton pods (model-control-mode none).
        digest = hashlib.sha256(payload).hexdigest()[:16]
        for obj in objects:
            if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "triton":
                template = obj["spec"]["template"]["metadata"]
                template.setdefault("annotations", {})[DIGEST_ANNOTATION] = digest

    if args.dry_run:
        plan = make_plan(objects, None, args.repository)
        print(f"# offload deploy --dry-run: overlay {args.overlay}, namespace {args.namespace}; "
              "nothing is sent to a cluster")
        print("# plan:")
        print("\n".join(f"#   {line}" for line in plan.describe().splitlines()))
        print("# objects whose CRDs (KEDA, Prometheus operator) a cluster lacks are skipped "
              "with a warning")
        print(to_yaml(plan.objects), end="")
        return 0

    from offload_deploy import cluster as k8s

    console = _console()
    api = k8s.connect(args.context)
    groups = k8s.served_groups(api)
    if _wants_gpus(objects):
        k8s.require_gpu_nodes(api)
    plan = make_plan(objects, groups, args.repository)
    for warning in plan.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    target = k8s.Cluster(api, args.namespace, console)
    for number, step in enumerate(plan.steps, 1):
        console.print(f"[bold]{number}. {step.description}[/]")
        if step.action == "apply":
            target.apply(step.objects)
        elif step.action == "upload":
            target.upload(loader, payload, str(args.repository))
        elif step.action == "delete-loader":
            target.delete_pod(loader["metadata"]["name"])
        elif step.action == "wait":
            names = [o["metadata"]["name"] for o in plan.objects if o["kind"] == "Deployment"]
            target.wait_rollout(names, args.timeout)
    _print_endpoint(console, target, args.namespace)
    return 0


def _wants_gpus(objects) -> bool:
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        for container in obj["spec"]["template"]["spec"].get("containers", []):
            if "nvidia.com/gpu" in container.get("resources", {}).get("limits", {}):
                return True
    return False


def _print_endpoint(console, target, namespace: str) -> None:
    endpoint, tls = target.endpoint()
    if endpoint is None:
        console.print("offload is up inside the cluster at offload."
                      f"{namespace}.svc:8001 (no Ingress host or LoadBalancer address yet).")
        console.print(f"From here: kubectl -n {namespace} port-forward svc/offload 8001:8001, then")
        endpoint = "127.0.0.1:8001"
    else:
        console.print(f"offload is up: {endpoint}{' (TLS)' if tls else ''}")
    console.print(f"  offload models --server {endpoint}{' --tls' if tls else ''}")
    console.print(f"  grid jobs: export OFFLOAD_SERVERS={endpoint}"
                  + ("  (client: tls=offload.TLS(), token=... when JWT auth is on)" if tls else ""))


def run_status(args: argparse.Namespace) -> int:
    from offload_deploy import cluster as k8s

    console = _console()
    target = k8s.Cluster(k8s.connect(args.context), args.namespace, console)
    rows = target.status_rows()
    if not rows:
        console.print(f"nothing of offload in namespace {args.namespace}")
        return 1
    width = max(len(r[0]) for r in rows)
    for name, state, extra in rows:
        console.print(f"{name:<{width}}  {state}  {extra}")
    endpoint, tls = target.endpoint()
    console.print(f"endpoint: {endpoint or 'none outside the cluster'}"
                  f"{' (TLS)' if tls else ''}")
    return 0


def run_undeploy(args: argparse.Namespace) -> int:
    from offload_deploy import cluster as k8s

    console = _console()
    api = k8s.connect(args.context)
    target = k8s.Cluster(api, args.namespace, console)
    deleted = target.delete_all(k8s.served_groups(api), keep_namespace=args.keep_namespace)
    for name in deleted:
        console.print(f"  deleted {name}")
    console.print(f"removed {len(deleted)} objects from namespace {args.namespace}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m offload_deploy.cli`: the same as `offload deploy`."""
    parser = argparse.ArgumentParser(prog="offload deploy")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except DeployError as error:
        print(f"offload deploy: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
