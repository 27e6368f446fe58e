"""The catalogue of kinds the operator creates: one place for group, version, kind and plural.

The renderers take apiVersion and kind from here, the Kube adapter its URL paths,
the handlers and Kopf settings their watches and label selectors.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Kind:
    group: str
    version: str
    kind: str
    plural: str
    optional: bool = False
    """Served only when a third-party CRD is installed; skipped (not an error) otherwise."""
    namespaced: bool = True
    """False for cluster-scoped kinds (their objects name the core's namespace in a label)."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def path_prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"

    @property
    def resource(self) -> tuple[str, str] | tuple[str, str, str]:
        """Kopf's resource selector: (version, plural) for the core group, else the triple."""
        return (
            (self.group, self.version, self.plural) if self.group else (self.version, self.plural)
        )


SECRET = Kind("", "v1", "Secret", "secrets")
SERVICE = Kind("", "v1", "Service", "services")
DEPLOYMENT = Kind("apps", "v1", "Deployment", "deployments")
NETWORK_POLICY = Kind("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies")
PDB = Kind("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets")
HPA = Kind("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
SERVICE_MONITOR = Kind(
    "monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors", optional=True
)
SERVICE_ACCOUNT = Kind("", "v1", "ServiceAccount", "serviceaccounts")
CLUSTER_ROLE_BINDING = Kind(
    "rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", namespaced=False
)
ENDPOINT_SLICE = Kind("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices")
"""Read only: the API server's endpoints (default/kubernetes), never a child."""

CHILDREN: tuple[Kind, ...] = (
    SECRET,
    SERVICE,
    DEPLOYMENT,
    NETWORK_POLICY,
    PDB,
    HPA,
    SERVICE_MONITOR,
    SERVICE_ACCOUNT,
    CLUSTER_ROLE_BINDING,
)
"""Every kind the operator applies, deletes or watches (by its managed-by label)."""

_BY_TYPE = {(k.api_version, k.kind): k for k in CHILDREN}


def kind_of(api_version: str, kind: str) -> Kind:
    """The catalogue entry of a manifest's apiVersion and kind (KeyError if not a child)."""
    return _BY_TYPE[(api_version, kind)]
