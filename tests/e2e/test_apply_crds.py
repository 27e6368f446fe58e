"""`qsys_testkit.kube.apply_crds` against the real API server: it leaves a CRD that already
says what the file says alone, and keeps the labels and annotations of one it replaces
(another lane's Argo CD Application may track it)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from qsys_testkit.checkout import REPO
from qsys_testkit.cluster import Cluster, must, wait_for
from qsys_testkit.kube import apply_crds

pytestmark = [pytest.mark.e2e]

GROUP = "applycrds.testkit.qsys.dev"
NAME = f"widgets.{GROUP}"
TRACKING = {
    "argocd.argoproj.io/tracking-id": "site:apiextensions.k8s.io/CustomResourceDefinition:/x"
}


@pytest.fixture
def crd_file(tmp_path: Path, cluster: Cluster) -> Iterator[Path]:
    """The QSysCore CRD (the largest schema) under a group of its own, so the shared CRDs
    are not touched."""
    body: dict[str, Any] = yaml.safe_load((REPO / "crds" / "qsys.dev_qsyscores.yaml").read_text())
    body["metadata"]["name"] = NAME
    body["spec"]["group"] = GROUP
    body["spec"]["names"] = {"kind": "Widget", "plural": "widgets", "singular": "widget"}
    path = tmp_path / "widgets.yaml"
    path.write_text(yaml.safe_dump(body))
    ext = client.ApiextensionsV1Api(cluster.api)
    try:
        yield path
    finally:
        try:
            ext.delete_custom_resource_definition(NAME)
        except ApiException as exc:
            if exc.status != 404:
                raise


def test_a_crd_that_holds_the_file_is_left_alone_and_a_replaced_one_keeps_its_owners(
    cluster: Cluster, crd_file: Path
) -> None:
    ext = client.ApiextensionsV1Api(cluster.api)
    apply_crds(cluster.api, [crd_file])
    ext.patch_custom_resource_definition(NAME, {"metadata": {"annotations": TRACKING}})
    before = ext.read_custom_resource_definition(NAME)

    apply_crds(cluster.api, [crd_file])
    again = ext.read_custom_resource_definition(NAME)
    assert must(again.metadata).resource_version == must(before.metadata).resource_version

    body = yaml.safe_load(crd_file.read_text())
    changed = copy.deepcopy(body)
    columns = changed["spec"]["versions"][0].setdefault("additionalPrinterColumns", [])
    columns.append({"name": "Applied", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    crd_file.write_text(yaml.safe_dump(changed))
    apply_crds(cluster.api, [crd_file])

    def replaced() -> client.V1CustomResourceDefinition | None:
        crd = ext.read_custom_resource_definition(NAME)
        columns = must(crd.spec).versions[0].additional_printer_columns or []
        return crd if any(c.name == "Applied" for c in columns) else None

    after = wait_for("the changed CRD", replaced, 30)
    meta = must(after.metadata)
    assert meta.resource_version != must(before.metadata).resource_version
    assert TRACKING.items() <= (meta.annotations or {}).items()
    assert (meta.labels or {}).get("app.kubernetes.io/part-of") == "qsys-operator"
