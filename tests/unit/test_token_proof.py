"""Generated tokens survive GitOps (a policy deleted and re-created keeps its tokens) and a
tenant still cannot make the operator adopt a Secret it did not generate: the decisions of
tokens.py over an in-memory Secret store (the real API server:
tests/e2e/test_first_ten_minutes.py)."""

from __future__ import annotations

import base64
import copy
from typing import Any

from fake_kube import FakeKube

from qsys_operator.api import AccessPolicy, QSysCore
from qsys_operator.render import TOKEN_PROOF_ANNOTATION
from qsys_operator.tokens import resolve_tokens, token_proof
from qsys_protocol.config import token_hmac

NS = "av"
KEY = b"k" * 32
PROOF = b"p" * 32
TOKEN = "Wm9vbTEwMS1wYW5lbC10b2tlbi1leGFtcGxlLXZhbHVlLTEyMw"


def core() -> QSysCore:
    return QSysCore.model_validate(
        {
            "metadata": {"name": "hall", "namespace": NS, "uid": "core-uid"},
            "spec": {"core": {"host": "192.0.2.10"}},
        }
    )


def policy(name: str = "ops", uid: str = "pol-1", subject: str = "agent") -> AccessPolicy:
    return AccessPolicy.model_validate(
        {
            "apiVersion": "qsys.dev/v1alpha1",
            "kind": "AccessPolicy",
            "metadata": {"name": name, "namespace": NS, "uid": uid},
            "spec": {
                "coreRef": {"name": "hall"},
                "subjects": [{"name": subject}],
                "rules": [{"methods": ["StatusGet"]}],
            },
        }
    )


class Secrets(FakeKube):
    """The shared fake Kubernetes, with the Secret views these tests read."""

    @property
    def store(self) -> dict[str, dict[str, Any]]:
        return {name: obj for (plural, _, name), obj in self.objects.items() if plural == "secrets"}

    def put_secret(self, manifest: dict[str, Any]) -> None:
        body = copy.deepcopy(manifest)
        body["metadata"]["resourceVersion"] = self._version()
        self.objects[("secrets", NS, body["metadata"]["name"])] = body


def tenant_secret(name: str, token: str, **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NS, **meta},
        "data": {"token": base64.b64encode(token.encode()).decode()},
    }


async def resolve(kube: Secrets, pol: AccessPolicy) -> tuple[dict[str, str], dict[str, str]]:
    out = await resolve_tokens(kube, pol, KEY, PROOF, core())
    return out.hashes, out.problems


def owners(kube: Secrets, name: str) -> list[tuple[str, bool]]:
    refs = kube.store[name]["metadata"].get("ownerReferences") or []
    return [(r["uid"], bool(r.get("controller"))) for r in refs]


def stored_token(kube: Secrets, name: str) -> str:
    return base64.b64decode(kube.store[name]["data"]["token"]).decode()


async def test_generated_secret_carries_a_proof_and_two_owners() -> None:
    kube = Secrets()
    hashes, problems = await resolve(kube, policy())
    assert problems == {}
    token = stored_token(kube, "ops-agent-token")
    assert hashes == {"agent": token_hmac(KEY, token)}
    # Controller: the policy; the core keeps the Secret when the policy goes.
    assert owners(kube, "ops-agent-token") == [("pol-1", True), ("core-uid", False)]
    proof = kube.store["ops-agent-token"]["metadata"]["annotations"][TOKEN_PROOF_ANNOTATION]
    assert proof == token_proof(PROOF, NS, "ops-agent-token", "ops", "agent", token)
    assert token not in proof
    assert kube.patched == []


async def test_recreated_policy_takes_back_the_same_token() -> None:
    kube = Secrets()
    first, _ = await resolve(kube, policy(uid="pol-1"))
    # Deleted: the garbage collector drops the dangling owner, the core stays.
    meta = kube.store["ops-agent-token"]["metadata"]
    meta["ownerReferences"] = [r for r in meta["ownerReferences"] if r["uid"] != "pol-1"]
    again, problems = await resolve(kube, policy(uid="pol-2"))
    assert problems == {}
    assert again == first
    assert owners(kube, "ops-agent-token") == [("pol-2", True), ("core-uid", False)]
    assert kube.patched == ["ops-agent-token"]


async def test_replaced_policy_before_garbage_collection_takes_back_the_same_token() -> None:
    kube = Secrets()
    first, _ = await resolve(kube, policy(uid="pol-1"))
    # Argo CD replace: a new UID while the old owner reference is still there.
    again, problems = await resolve(kube, policy(uid="pol-2"))
    assert (again, problems) == (first, {})
    assert owners(kube, "ops-agent-token")[0] == ("pol-2", True)


async def test_a_tenant_made_secret_is_never_adopted() -> None:
    kube = Secrets()
    kube.put_secret(tenant_secret("ops-agent-token", TOKEN))
    hashes, problems = await resolve(kube, policy())
    assert hashes == {}
    assert "not generated for" in problems["agent"]
    assert TOKEN not in problems["agent"]
    assert kube.patched == []
    assert owners(kube, "ops-agent-token") == []


async def test_a_copied_proof_does_not_cover_another_token() -> None:
    kube = Secrets()
    await resolve(kube, policy())
    proof = kube.store["ops-agent-token"]["metadata"]["annotations"][TOKEN_PROOF_ANNOTATION]
    # The tenant (who may read the Secret) replaces it with a token of their choice.
    forged = {TOKEN_PROOF_ANNOTATION: proof}
    kube.objects.clear()
    kube.put_secret(tenant_secret("ops-agent-token", TOKEN, annotations=forged))
    hashes, problems = await resolve(kube, policy(uid="pol-2"))
    assert hashes == {}
    assert "no valid token proof" in problems["agent"]


async def test_a_proof_is_bound_to_its_policy_and_subject_names() -> None:
    # ops-a / b-agent and ops / a-b-agent name the same Secret: ops-a-b-agent-token.
    kube = Secrets()
    await resolve(kube, policy(name="ops-a", subject="b-agent"))
    meta = kube.store["ops-a-b-agent-token"]["metadata"]
    meta["ownerReferences"] = [r for r in meta["ownerReferences"] if not r["controller"]]
    hashes, problems = await resolve(kube, policy(name="ops", subject="a-b-agent", uid="x"))
    assert hashes == {}
    assert "a-b-agent" in problems["a-b-agent"]


async def test_a_secret_controlled_by_something_else_is_not_taken_even_with_a_proof() -> None:
    kube = Secrets()
    await resolve(kube, policy())
    meta = kube.store["ops-agent-token"]["metadata"]
    meta["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x", "uid": "d", "controller": True}
    ]
    hashes, problems = await resolve(kube, policy(uid="pol-2"))
    assert hashes == {}
    assert "agent" in problems


async def test_a_secret_from_before_proofs_gets_its_proof_and_core_owner() -> None:
    kube = Secrets()
    pol = policy()
    ref = {
        "apiVersion": "qsys.dev/v1alpha1",
        "kind": "AccessPolicy",
        "name": "ops",
        "uid": "pol-1",
        "controller": True,
    }
    kube.put_secret(tenant_secret("ops-agent-token", TOKEN, ownerReferences=[ref]))
    hashes, problems = await resolve(kube, pol)
    assert (hashes, problems) == ({"agent": token_hmac(KEY, TOKEN)}, {})
    assert owners(kube, "ops-agent-token") == [("pol-1", True), ("core-uid", False)]
    annotations = kube.store["ops-agent-token"]["metadata"]["annotations"]
    expected = token_proof(PROOF, NS, "ops-agent-token", "ops", "agent", TOKEN)
    assert annotations[TOKEN_PROOF_ANNOTATION] == expected
    # Nothing to change the second time.
    await resolve(kube, pol)
    assert kube.patched == ["ops-agent-token"]


async def test_an_owned_secret_without_proof_must_hold_a_strong_token() -> None:
    # Owner references can be written by whoever may write Secrets in the namespace.
    kube = Secrets()
    ref = {"apiVersion": "qsys.dev/v1alpha1", "kind": "AccessPolicy", "name": "ops", "uid": "pol-1"}
    kube.put_secret(
        tenant_secret(
            "ops-agent-token", "password" * 5, ownerReferences=[ref | {"controller": True}]
        )
    )
    hashes, problems = await resolve(kube, policy())
    assert hashes == {}
    assert "too predictable" in problems["agent"]
    assert "password" not in problems["agent"]
    assert kube.patched == []
