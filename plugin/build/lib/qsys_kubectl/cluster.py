"""What `kubectl qsys` reads and writes in the cluster, through the official client.

Connection settings follow kubectl: `--kubeconfig` (else $KUBECONFIG, else
~/.kube/config), `--context`, and the namespace of the context unless `-n` is given.
"""

from __future__ import annotations

import base64
import binascii
import queue
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from pydantic import BaseModel, ValidationError

from qsys_operator.api import GROUP, VERSION, AccessPolicy, QSysCore
from qsys_operator.render import (
    CONFIG_KEY,
    TOKEN_KEY,
    config_secret_name,
    selector_labels,
    token_secret_name,
)
from qsys_protocol.config import ConfigError, GatewayConfig, parse_config

from .views import Endpoint, PluginError

TOKEN_BYTES = 32
M = TypeVar("M", bound=BaseModel)
FOLLOW_BUFFER = 1000


@dataclass(frozen=True)
class Target:
    kubeconfig: str | None
    context: str | None
    namespace: str | None
    all_namespaces: bool = False


@dataclass(frozen=True)
class TokenRef:
    policy: str
    subject: str
    secret: str
    key: str
    generated: bool


def _api_error(exc: ApiException, what: str) -> PluginError:
    if exc.status == 404:
        return PluginError(f"{what} not found")
    if exc.status == 403:
        return PluginError(f"{what}: forbidden (check your RBAC)")
    return PluginError(f"{what}: API error {exc.status} {exc.reason}")


def as_model(kind: type[M], obj: dict[str, Any]) -> M:
    """The resource as this plugin's model; a clear error, not a traceback, when the
    cluster's CRD is of another version than the plugin (a field one of them lacks)."""
    try:
        return kind.model_validate(obj)
    except ValidationError as exc:
        name = (obj.get("metadata") or {}).get("name")
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3]
        )
        raise PluginError(
            f'{kind.__name__} "{name}" does not match this kubectl-qsys (install the plugin '
            f"of the operator's version): {problems}"
        ) from None


class Cluster:
    def __init__(self, target: Target) -> None:
        try:
            self.api = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=target.kubeconfig, context=target.context
            )
            _, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                config_file=target.kubeconfig
            )
        except (ConfigException, OSError) as exc:
            raise PluginError(f"cannot load kubeconfig: {exc}") from None
        if target.context:
            contexts, _ = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                config_file=target.kubeconfig
            )
            active = next(c for c in contexts if c["name"] == target.context)
        default_ns = (active.get("context") or {}).get("namespace") or "default"
        self.namespace: str = target.namespace or default_ns
        self.all_namespaces = target.all_namespaces
        self.target = target
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)

    def close(self) -> None:
        self.api.close()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, _request_timeout=30, **kwargs)
        except ApiException as exc:
            raise _api_error(exc, what) from None
        except OSError as exc:  # urllib3 wraps most, not all, connection errors
            raise PluginError(f"{what}: cannot reach the API server: {exc}") from None
        except Exception as exc:
            if type(exc).__module__.startswith("urllib3"):
                raise PluginError(f"{what}: cannot reach the API server: {exc}") from None
            raise

    # ---- custom resources ------------------------------------------------------------

    def _list(self, plural: str) -> list[dict[str, Any]]:
        if self.all_namespaces:
            out = self._call(plural, self.custom.list_cluster_custom_object, GROUP, VERSION, plural)
        else:
            out = self._call(
                plural,
                self.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                plural,
            )
        return cast(list[dict[str, Any]], out.get("items") or [])

    def cores(self) -> list[dict[str, Any]]:
        return self._list(QSysCore.PLURAL)

    def policies(self) -> list[dict[str, Any]]:
        return self._list(AccessPolicy.PLURAL)

    def _get(self, kind: str, plural: str, name: str) -> dict[str, Any]:
        out = self._call(
            f'{kind} "{name}" in namespace "{self.namespace}"',
            self.custom.get_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            plural,
            name,
        )
        return cast(dict[str, Any], out)

    def qsyscore(self, name: str) -> QSysCore:
        return as_model(QSysCore, self._get(QSysCore.KIND, QSysCore.PLURAL, name))

    def policy(self, name: str) -> AccessPolicy:
        return as_model(AccessPolicy, self._get(AccessPolicy.KIND, AccessPolicy.PLURAL, name))

    # ---- secrets -----------------------------------------------------------------------

    def secret_data(self, name: str) -> dict[str, str]:
        secret = self._call(
            f'Secret "{name}" in namespace "{self.namespace}"',
            self.core.read_namespaced_secret,
            name,
            self.namespace,
        )
        return dict(secret.data or {})

    def token_ref(self, policy_name: str, subject: str) -> TokenRef:
        policy = self.policy(policy_name)
        found = next((s for s in policy.spec.subjects if s.name == subject), None)
        if found is None:
            names = ", ".join(s.name for s in policy.spec.subjects)
            raise PluginError(
                f'subject "{subject}" not found in AccessPolicy "{policy_name}" (subjects: {names})'
            )
        if found.serviceAccount is not None:
            user = found.serviceAccount.username(policy.metadata.namespace)
            raise PluginError(
                f'subject "{subject}" has no token: its pods authenticate as {user} with their '
                "projected ServiceAccount token (docs/security.md)"
            )
        if found.tokenSecretRef is not None:
            ref = found.tokenSecretRef
            return TokenRef(policy_name, subject, ref.name, ref.key, generated=False)
        return TokenRef(
            policy_name, subject, token_secret_name(policy_name, subject), TOKEN_KEY, True
        )

    def token(self, ref: TokenRef) -> str:
        data = self.secret_data(ref.secret)
        raw = data.get(ref.key)
        if not raw:
            raise PluginError(f'Secret "{ref.secret}" has no key "{ref.key}"')
        try:
            return base64.b64decode(raw, validate=True).decode("utf-8").strip()
        except (binascii.Error, UnicodeDecodeError):
            raise PluginError(f'Secret "{ref.secret}" key "{ref.key}" is not UTF-8') from None

    def rotate(self, ref: TokenRef) -> str:
        """Write a fresh random token into the subject's Secret; the operator follows it."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        body = {"data": {ref.key: base64.b64encode(token.encode()).decode()}}
        self._call(
            f'Secret "{ref.secret}" in namespace "{self.namespace}"',
            self.core.patch_namespaced_secret,
            ref.secret,
            self.namespace,
            body,
        )
        return token

    def gateway_config(self, core_name: str) -> GatewayConfig:
        """The gateway config the operator rendered for the core (what its gateways run)."""
        name = config_secret_name(core_name)
        raw = self.secret_data(name).get(CONFIG_KEY)
        if not raw:
            raise PluginError(
                f'Secret "{name}" has no key "{CONFIG_KEY}": the operator has not rendered '
                f'QSysCore "{core_name}" yet'
            )
        try:
            return parse_config(yaml.safe_load(base64.b64decode(raw)))
        except (ConfigError, yaml.YAMLError, binascii.Error) as exc:
            raise PluginError(f'Secret "{name}": unusable gateway config: {exc}') from None

    # ---- gateway pods ------------------------------------------------------------------

    def _gateway_pods(self, core_name: str) -> list[Any]:
        selector = ",".join(f"{k}={v}" for k, v in selector_labels(core_name).items())
        pods = self._call(
            f'gateway pods of QSysCore "{core_name}"',
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=selector,
        )
        return sorted(pods.items, key=lambda p: p.metadata.name)

    def ready_gateways(self, core_name: str) -> list[Endpoint]:
        """Ready, not terminating gateway pods with an IP (the pods `kubectl port-forward svc/`
        picks from, read from the pods since EndpointSlices may not list every address)."""
        out = []
        for pod in self._gateway_pods(core_name):
            status = pod.status
            conditions = (status and status.conditions) or []
            ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
            if ready and status.pod_ip and pod.metadata.deletion_timestamp is None:
                out.append(Endpoint(pod=pod.metadata.name, ip=status.pod_ip))
        return out

    def gateway_pods(self, core_name: str) -> list[str]:
        return [p.metadata.name for p in self._gateway_pods(core_name)]

    def follow_logs(self, pods: list[str], *, tail: int | None) -> Iterator[tuple[str, str]]:
        """(pod, line) from every pod's followed log, as they arrive; ends when every
        stream has ended (pods deleted). A reader blocks while FOLLOW_BUFFER lines wait."""
        lines: queue.Queue[tuple[str, str] | PluginError | None] = queue.Queue(FOLLOW_BUFFER)

        def read(pod: str) -> None:
            try:
                for line in self.pod_log(pod, follow=True, tail=tail):
                    lines.put((pod, line))
            except PluginError as exc:
                lines.put(exc)
            except Exception as exc:  # a broken stream ends that pod's follow, loudly
                lines.put(PluginError(f'logs of pod "{pod}": stream ended: {exc}'))
            finally:
                lines.put(None)

        for pod in pods:
            threading.Thread(target=read, args=(pod,), daemon=True, name=f"log-{pod}").start()
        running = len(pods)
        while running:
            try:
                item = lines.get(timeout=0.5)  # wakes for Ctrl-C
            except queue.Empty:
                continue
            if item is None:
                running -= 1
            elif isinstance(item, PluginError):
                raise item
            else:
                yield item

    def pod_log(self, pod: str, *, follow: bool, tail: int | None) -> Iterator[str]:
        what = f'logs of pod "{pod}"'
        kwargs: dict[str, Any] = {"container": "gateway", "_preload_content": False}
        if tail is not None:
            kwargs["tail_lines"] = tail
        if follow:
            kwargs["follow"] = True
        try:
            resp: Any = self.core.read_namespaced_pod_log(pod, self.namespace, **kwargs)
        except ApiException as exc:
            detail = exc.body.decode() if isinstance(exc.body, bytes) else str(exc.body or "")
            raise PluginError(f"{what}: API error {exc.status}: {detail[:300]}") from None
        try:
            buffer = b""
            for chunk in resp.stream(4096):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace")
            if buffer:
                yield buffer.decode("utf-8", "replace")
        finally:
            resp.release_conn()
