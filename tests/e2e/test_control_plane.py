"""The control plane under the e2e suite does what later tests rely on: CRDs with
CEL validation, Deployments that become available, garbage collection, and
ServiceAccount tokens checked by RBAC."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from qsys_testkit.checkout import image_names
from qsys_testkit.cluster import Cluster, api_error, must, status_of, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.floor]


@pytest.fixture
def widget_crd(cluster: Cluster) -> Iterator[tuple[str, str]]:
    """A namespaced CRD (group, plural) with a structural schema and a CEL rule."""
    group = f"e2e{uuid.uuid4().hex[:8]}.qsys.test"
    plural = "widgets"
    schema = client.V1JSONSchemaProps(
        type="object",
        properties={
            "spec": client.V1JSONSchemaProps(
                type="object",
                required=["replicas", "minReplicas"],
                properties={
                    "replicas": client.V1JSONSchemaProps(type="integer", minimum=0),
                    "minReplicas": client.V1JSONSchemaProps(type="integer", minimum=0),
                },
                x_kubernetes_validations=[
                    client.V1ValidationRule(
                        rule="self.minReplicas <= self.replicas",
                        message="minReplicas must not exceed replicas",
                    )
                ],
            )
        },
    )
    crd = client.V1CustomResourceDefinition(
        metadata=client.V1ObjectMeta(name=f"{plural}.{group}"),
        spec=client.V1CustomResourceDefinitionSpec(
            group=group,
            scope="Namespaced",
            names=client.V1CustomResourceDefinitionNames(
                plural=plural, singular="widget", kind="Widget"
            ),
            versions=[
                # "schema" is the field's alias; its name (var_schema) is silently dropped.
                client.V1CustomResourceDefinitionVersion(  # type: ignore[call-arg]
                    name="v1",
                    served=True,
                    storage=True,
                    schema=client.V1CustomResourceValidation(open_apiv3_schema=schema),
                )
            ],
        ),
    )
    ext = client.ApiextensionsV1Api(cluster.api)
    ext.create_custom_resource_definition(crd)

    def established() -> bool:
        got = ext.read_custom_resource_definition(f"{plural}.{group}")
        conditions = must(got.status).conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for("the CRD to be established", established, timeout=60)
    yield group, plural
    ext.delete_custom_resource_definition(f"{plural}.{group}")


def test_crd_schema_and_cel_rule_are_enforced(
    cluster: Cluster, namespace: str, widget_crd: tuple[str, str]
) -> None:
    group, plural = widget_crd
    objects = client.CustomObjectsApi(cluster.api)

    def widget(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": f"{group}/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": spec,
        }

    def create(body: dict[str, Any]) -> dict[str, Any]:
        return cast(
            dict[str, Any],
            objects.create_namespaced_custom_object(group, "v1", namespace, plural, body),
        )

    # CRDs may take a moment to be served after Established.
    created = wait_for(
        "the CRD to be served",
        lambda: _try_create(create, widget("good", {"replicas": 2, "minReplicas": 1, "x": 1})),
        timeout=30,
    )
    assert created["spec"] == {"replicas": 2, "minReplicas": 1}, "unknown field not pruned"

    error = api_error(create, widget("bad", {"replicas": 1, "minReplicas": 3}))
    assert error.status == 422
    assert "minReplicas must not exceed replicas" in str(error.body)

    error = api_error(create, widget("negative", {"replicas": -1, "minReplicas": 0}))
    assert error.status == 422
    assert "spec.replicas" in str(error.body)

    listed = cast(
        dict[str, Any], objects.list_namespaced_custom_object(group, "v1", namespace, plural)
    )
    names = [item["metadata"]["name"] for item in listed["items"]]
    assert names == ["good"]


def _try_create(create: Any, body: dict[str, Any]) -> dict[str, Any] | None:
    try:
        result: dict[str, Any] = create(body)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return result


def test_deployment_becomes_available(cluster: Cluster, namespace: str) -> None:
    apps = client.AppsV1Api(cluster.api)
    core = client.CoreV1Api(cluster.api)
    labels = {"app": "pause"}
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="pause"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[
                        # The pinned pause image every node holds (`make images`):
                        # real pods too, on kind or any cluster without a registry.
                        client.V1Container(
                            name="pause",
                            image=image_names()["pause"],
                            image_pull_policy="Never",
                        )
                    ],
                    termination_grace_period_seconds=0,
                ),
            ),
        ),
    )
    apps.create_namespaced_deployment(namespace, deployment)

    def available() -> int | None:
        status = must(apps.read_namespaced_deployment_status("pause", namespace).status)
        return status.available_replicas if status.available_replicas == 2 else None

    assert wait_for("2 available replicas", available, timeout=180) == 2

    replica_sets = apps.list_namespaced_replica_set(namespace).items
    assert len(replica_sets) == 1
    rs_meta = must(replica_sets[0].metadata)
    owner = must(rs_meta.owner_references)[0]
    assert (owner.kind, owner.name) == ("Deployment", "pause")
    assert must(replica_sets[0].status).ready_replicas == 2

    pods = core.list_namespaced_pod(namespace, label_selector="app=pause").items
    assert len(pods) == 2
    for pod in pods:
        assert must(pod.spec).node_name, "pod was not scheduled"
        status = must(pod.status)
        assert status.phase == "Running"
        ready = [c.status for c in status.conditions or [] if c.type == "Ready"]
        assert ready == ["True"]
        assert must(must(pod.metadata).owner_references)[0].name == rs_meta.name


def test_garbage_collector_deletes_dependents(cluster: Cluster, namespace: str) -> None:
    core = client.CoreV1Api(cluster.api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    reference = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=must(owner.metadata).uid
    )
    for name in ("dependent", "bystander"):
        refs = [reference] if name == "dependent" else None
        core.create_namespaced_config_map(
            namespace,
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, owner_references=refs)),
        )

    core.delete_namespaced_config_map("owner", namespace)

    def dependent_gone() -> bool:
        try:
            core.read_namespaced_config_map("dependent", namespace)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    wait_for("the garbage collector to delete the dependent", dependent_gone, timeout=60)
    bystander = core.read_namespaced_config_map("bystander", namespace)
    assert must(bystander.metadata).name == "bystander"


def test_service_account_token_authenticates_and_rbac_limits_it(
    cluster: Cluster, namespace: str
) -> None:
    core = client.CoreV1Api(cluster.api)
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader"))
    )
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="configmap-reader"),
            rules=[
                client.V1PolicyRule(
                    api_groups=[""], resources=["configmaps"], verbs=["get", "list"]
                )
            ],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="reader"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="configmap-reader"
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)
            ],
        ),
    )
    token_request = core.create_namespaced_service_account_token(
        "reader",
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
        ),
    )
    token = must(token_request.status).token
    assert token

    def api_with_token(bearer: str) -> client.ApiClient:
        cfg = cluster.configuration()
        as_sa = client.Configuration(host=cfg.host)
        as_sa.ssl_ca_cert = cfg.ssl_ca_cert
        as_sa.verify_ssl = cfg.verify_ssl
        as_sa.api_key = {"authorization": f"Bearer {bearer}"}
        return client.ApiClient(as_sa)

    with api_with_token(token) as sa_api:
        review = client.AuthenticationV1Api(sa_api).create_self_subject_review(
            client.V1SelfSubjectReview()
        )
        user = must(must(review.status).user_info)
        assert user.username == f"system:serviceaccount:{namespace}:reader"

        sa_core = client.CoreV1Api(sa_api)
        wait_for(  # RBAC's authorizer cache catches up with the new binding
            "the RoleBinding to take effect",
            lambda: status_of(lambda: sa_core.list_namespaced_config_map(namespace)) == 200,
            timeout=30,
        )
        assert api_error(sa_core.list_namespaced_secret, namespace).status == 403
        assert api_error(sa_core.list_namespaced_config_map, "default").status == 403
        denied = api_error(
            sa_core.create_namespaced_config_map,
            namespace,
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name="nope")),
        )
        assert denied.status == 403

    with api_with_token(token[:-4] + "AAAA") as forged:
        assert (
            api_error(client.CoreV1Api(forged).list_namespaced_config_map, namespace).status == 401
        )
