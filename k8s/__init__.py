"""`make deploy`: render the kustomize overlays in k8s/ and apply them to a cluster.

k8s/ is this package: its manifests (base/, overlays/, components/, locust/, schemas/) are
package data, found where the package is installed (`manifests_dir()`), not in a checkout.

The pieces, each one idea: `render` (kubectl kustomize → objects), `plan` (the order
and what the cluster can take), `cluster` (the kubernetes client: apply, upload, wait,
status, delete), `cli` (`offload deploy`, `offload deploy status`, `offload undeploy`).
Only `cluster` imports the kubernetes client, and only when a cluster is used.
"""

from offload_deploy.errors import DeployError
from offload_deploy.plan import Plan, Step, make_plan
from offload_deploy.render import BASE_NAMESPACE, OVERLAYS, manifests_dir, render

__all__ = ["BASE_NAMESPACE", "OVERLAYS", "DeployError", "Plan", "Step", "make_plan",
           "manifests_dir", "render"]
