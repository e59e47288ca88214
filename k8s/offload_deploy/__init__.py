"""`make deploy`: render the kustomize overlays in k8s/ and apply them to a cluster.

The pieces, each one idea: `render` (kubectl kustomize → objects), `plan` (the order
and what the cluster can take), `cluster` (the kubernetes client: apply, upload, wait,
status, delete), `cli` (`offload deploy`, `offload deploy status`, `offload undeploy`).
Only `cluster` imports the kubernetes client, and only when a cluster is used.
"""

from offload_deploy.errors import DeployError
from offload_deploy.plan import Plan, Step, make_plan
from offload_deploy.render import BASE_NAMESPACE, K8S_DIR, OVERLAYS, render

__all__ = ["BASE_NAMESPACE", "K8S_DIR", "OVERLAYS", "DeployError", "Plan", "Step", "make_plan",
           "render"]
