"""`kubectl qsys`: everyday tasks on QSysCores and AccessPolicies (docs/kubectl-plugin.md).

Exit codes (grep's convention, so scripts can tell a "no" from a failure):
0 success / allowed, 1 a negative answer (can-i: denied; call: the gateway answered
with a JSON-RPC error), 2 an error (usage, not found, no gateway ready, API failure).
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from qsys_operator.api import AccessPolicy
from qsys_operator.render.common import HTTP_PORT, gateway_name
from qsys_operator.render.subjects import precedence

from .cluster import Cluster, Target, as_model
from .gateway import port_forward, rpc
from .views import (
    AUDIT_COLUMNS,
    STATUS_COLUMNS,
    PluginError,
    audit_lines,
    audit_row,
    call_params,
    can_i,
    core_summary,
    merge_by_time,
    status_rows,
    table,
)

OK, NO, ERROR = 0, 1, 2


def _emit(data: Any, output: str | None, text: Callable[[], str]) -> None:
    if output == "json":
        print(json.dumps(data, indent=2, sort_keys=False, default=str))
    elif output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False).rstrip())
    else:
        print(text())


def _cluster(args: argparse.Namespace) -> Cluster:
    return Cluster(
        Target(
            kubeconfig=getattr(args, "kubeconfig", None),
            context=getattr(args, "context", None),
            namespace=getattr(args, "namespace", None),
            all_namespaces=getattr(args, "all_namespaces", False),
        )
    )


# ---- commands ---------------------------------------------------------------------------


def cmd_status(kube: Cluster, args: argparse.Namespace) -> int:
    cores = kube.cores()
    if args.core:
        cores = [c for c in cores if c["metadata"]["name"] == args.core]
        if not cores:
            raise PluginError(f'QSysCore "{args.core}" in namespace "{kube.namespace}" not found')
    policies = kube.policies()
    summaries = [
        core_summary(
            c,
            [
                p
                for p in policies
                if p["metadata"].get("namespace") == c["metadata"].get("namespace")
            ],
        )
        for c in sorted(
            cores, key=lambda c: (c["metadata"].get("namespace"), c["metadata"]["name"])
        )
    ]

    def text() -> str:
        if not summaries:
            where = "any namespace" if kube.all_namespaces else f'namespace "{kube.namespace}"'
            return f"No QSysCores found in {where}."
        header: Sequence[str] = STATUS_COLUMNS
        rows = status_rows(summaries)
        if kube.all_namespaces:
            header = ("NAMESPACE", *header)
            rows = [[str(s["namespace"]), *r] for s, r in zip(summaries, rows, strict=True)]
        out = [table(header, rows)]
        problems = [f"  {s['name']}: {p}" for s in summaries for p in s["problems"]] + [
            f"  {s['name']}/{pol['name']}: {p}"
            for s in summaries
            for pol in s["policies"]
            for p in pol["problems"]
        ]
        if problems:
            out += ["", "Conditions not True:", *problems]
        grace = [
            f"  {s['name']}/{pol['name']}: subject {subject} until {until}"
            for s in summaries
            for pol in s["policies"]
            for subject, until in sorted(pol["tokensInGrace"].items())
        ]
        if grace:
            out += ["", "Previous tokens still admitted (rotation grace):", *grace]
        accounts = [
            f"  {s['name']}/{pol['name']}: subject {subject} = {user} "
            f"(token audience {s['gateways']['serviceAccountAudience']})"
            for s in summaries
            for pol in s["policies"]
            for subject, user in sorted(pol["serviceAccounts"].items())
        ]
        if accounts:
            out += ["", "ServiceAccount subjects (pods present a projected token):", *accounts]
        return "\n".join(out)

    _emit({"items": summaries}, args.output, text)
    return OK


def cmd_token(kube: Cluster, args: argparse.Namespace) -> int:
    ref = kube.token_ref(args.policy, args.subject)
    grace = kube.policy(args.policy).spec.tokenGracePeriodSeconds
    if args.action == "show":
        token = kube.token(ref)
    else:
        kube.token(ref)  # the Secret must exist and hold the key before it is replaced
        token = kube.rotate(ref)
    data = {
        "policy": ref.policy,
        "subject": ref.subject,
        "secret": ref.secret,
        "key": ref.key,
        "generated": ref.generated,
    }
    if args.action == "rotate":
        data["gracePeriodSeconds"] = grace
    if args.action == "show" or args.show:
        data["token"] = token

    def text() -> str:
        if args.action == "show":
            return token
        line = (
            f'token of subject "{ref.subject}" rotated (Secret {ref.secret}, key {ref.key}); '
            f"the previous token is admitted for {grace} s more (spec.tokenGracePeriodSeconds)"
        )
        return f"{line}\n{token}" if args.show else line

    _emit(data, args.output, text)
    return OK


def cmd_can_i(kube: Cluster, args: argparse.Namespace) -> int:
    policy = kube.policy(args.policy)
    if not any(s.name == args.subject for s in policy.spec.subjects):
        raise PluginError(f'subject "{args.subject}" not found in AccessPolicy "{args.policy}"')
    core = policy.spec.coreRef.name
    config = kube.gateway_config(core)
    subject = config.subject(args.subject)
    if subject is None:
        raise PluginError(
            f'subject "{args.subject}" is not in the gateway config of QSysCore "{core}" '
            f"(see the conditions of AccessPolicy {args.policy}: "
            f"kubectl describe accesspolicy {args.policy})"
        )
    params = call_params(args.method, args.target, args.value)
    decision = can_i(subject, args.method, params)
    data = {
        "allowed": decision.allowed,
        "reason": decision.reason,
        "subject": args.subject,
        "policy": args.policy,
        "core": core,
        "method": args.method,
        "params": params,
        "targets": list(decision.targets),
    }
    _emit(data, args.output, lambda: f"{'yes' if decision.allowed else 'no'} ({decision.reason})")
    return OK if decision.allowed else NO


def _policy_of(kube: Cluster, core: str, subject: str, policy: str | None) -> str:
    """The AccessPolicy bound to `core` that holds `subject` (the operator's precedence)."""
    if policy:
        return policy
    bound = [
        as_model(AccessPolicy, p)
        for p in kube.policies()
        if (p.get("spec") or {}).get("coreRef", {}).get("name") == core
    ]
    holders = [p for p in bound if any(s.name == subject for s in p.spec.subjects)]
    if not holders:
        raise PluginError(f'no AccessPolicy bound to QSysCore "{core}" has a subject "{subject}"')
    return min(holders, key=precedence).metadata.name


def cmd_call(kube: Cluster, args: argparse.Namespace) -> int:
    try:
        params = json.loads(args.params) if args.params else {}
    except ValueError as exc:
        raise PluginError(f"PARAMS is not JSON: {exc}") from None
    core = kube.qsyscore(args.core)
    token = kube.token(
        kube.token_ref(_policy_of(kube, args.core, args.subject, args.policy), args.subject)
    )
    ready = kube.ready_gateways(args.core)
    if not ready:
        raise PluginError(f'no gateway ready for QSysCore "{args.core}"')
    ca = None
    scheme = "http"
    if core.spec.gateway.tlsSecretName:
        scheme = "https"
        data = kube.secret_data(core.spec.gateway.tlsSecretName)
        ca = base64.b64decode(data.get("ca.crt") or data.get("tls.crt") or "").decode() or None
    if args.direct:
        answer = rpc(f"{scheme}://{ready[0].ip}:{HTTP_PORT}", token, args.method, params, ca)
    else:
        service = f"svc/{gateway_name(args.core)}"
        with port_forward(kube.target, kube.namespace, service, HTTP_PORT) as port:
            answer = rpc(f"{scheme}://127.0.0.1:{port}", token, args.method, params, ca)
    _emit(answer, args.output or "json", lambda: "")
    return NO if "error" in answer else OK


def _printer(output: str | None) -> Callable[[dict[str, Any]], None]:
    header = [output is not None]

    def show(record: dict[str, Any]) -> None:
        if output == "json":
            print(json.dumps(record), flush=True)
        elif output == "yaml":
            print("---\n" + yaml.safe_dump(record, sort_keys=False).rstrip(), flush=True)
        else:
            if not header[0]:
                print("   ".join(AUDIT_COLUMNS), flush=True)
                header[0] = True
            print("   ".join(audit_row(record)), flush=True)

    return show


def cmd_audit(kube: Cluster, args: argparse.Namespace) -> int:
    kube.qsyscore(args.core)
    pods = kube.gateway_pods(args.core)
    if not pods:
        raise PluginError(f'no gateway pods for QSysCore "{args.core}"')
    if args.pod:
        if args.pod not in pods:
            raise PluginError(f'pod "{args.pod}" is not a gateway of QSysCore "{args.core}"')
        pods = [args.pod]
    show = _printer(args.output)
    if args.follow:
        try:
            for pod, line in kube.follow_logs(pods, tail=args.tail):
                for record in audit_lines([line], subject=args.subject, pod=pod):
                    show(record)
        except KeyboardInterrupt:
            pass  # Ctrl-C (or SIGTERM) is how a follow ends
        return OK
    records = [
        record
        for pod in pods
        for record in audit_lines(
            kube.pod_log(pod, follow=False, tail=args.tail), subject=args.subject, pod=pod
        )
    ]
    records = merge_by_time(records)
    if args.output is None:
        if records:
            print(table(AUDIT_COLUMNS, [audit_row(r) for r in records]))
        return OK
    for record in records:
        show(record)
    return OK


# ---- parser -----------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    """kubectl's connection and output flags, accepted before or after the command."""
    common = argparse.ArgumentParser(add_help=False)
    s = argparse.SUPPRESS
    common.add_argument("-n", "--namespace", default=s, help="namespace (default: the context's)")
    common.add_argument("--context", default=s, help="kubeconfig context")
    common.add_argument("--kubeconfig", default=s, help="kubeconfig file")
    common.add_argument("-o", "--output", choices=["json", "yaml"], default=s)
    return common


def parser() -> argparse.ArgumentParser:
    common = _common()
    top = argparse.ArgumentParser(
        prog="kubectl qsys",
        parents=[common],
        description="Q-SYS gateways: status, tokens, offline policy checks, calls, audit.",
        epilog="Exit codes: 0 ok/yes, 1 no (can-i denied, call answered an error), 2 error.",
    )
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("status", parents=[common], help="cores, gateways, Core state, subjects")
    p.add_argument("core", nargs="?")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("token", parents=[common], help="show or rotate a subject's token")
    p.add_argument("action", choices=["show", "rotate"])
    p.add_argument("policy")
    p.add_argument("subject")
    p.add_argument("--show", action="store_true", help="rotate: print the new token")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser(
        "can-i",
        parents=[common],
        help="may SUBJECT make this call? (the gateway's policy code, offline)",
    )
    p.add_argument("policy")
    p.add_argument("subject")
    p.add_argument("method", help="QRC method, e.g. Component.Set")
    p.add_argument("target", nargs="?", help="COMPONENT[.CONTROL] (Control.*: a Named Control)")
    p.add_argument("value", nargs="?", help="value written (number, true/false or text)")
    p.set_defaults(func=cmd_can_i)

    p = sub.add_parser("call", parents=[common], help="one QRC call through a port-forward")
    p.add_argument("core")
    p.add_argument("method")
    p.add_argument("params", nargs="?", help='JSON params, e.g. \'{"Name": "gain"}\'')
    p.add_argument("--as", dest="subject", required=True, help="subject whose token is used")
    p.add_argument("--policy", help="the AccessPolicy of the subject (default: found)")
    p.add_argument(
        "--direct",
        action="store_true",
        help="dial the pod IP instead of a port-forward (from inside the cluster network)",
    )
    p.set_defaults(func=cmd_call)

    p = sub.add_parser("audit", parents=[common], help="audit lines from the gateway pods' logs")
    p.add_argument("core")
    p.add_argument("--subject")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--pod", help="one gateway pod")
    p.add_argument("--tail", type=int, help="lines of each pod's log to read")
    p.set_defaults(func=cmd_audit)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.output = getattr(args, "output", None)
    try:
        kube = _cluster(args)
        try:
            code: int = args.func(kube, args)
        finally:
            kube.close()
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ERROR
    except KeyboardInterrupt:
        return ERROR
    return code


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run() -> None:
    """The console script: SIGTERM stops like Ctrl-C (a follow ends with exit 0)."""
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())


if __name__ == "__main__":
    run()
