"""Pure renderers of the operator's desired state: no I/O, no Kubernetes client.

The same inputs always give the same manifests (sorted, no timestamps), so a
reconcile that changes nothing applies nothing.
"""

from .common import (
    RESTART_HASH_ANNOTATION,
    Manifest,
    config_secret_name,
    gateway_name,
    labels,
    selector_labels,
    token_key_secret_name,
    token_secret_name,
)
from .config import CONFIG_KEY, gateway_config, restart_hash
from .core import ChildRef, RenderResult, render_core_children
from .subjects import (
    Grace,
    PolicyBinding,
    SubjectConflict,
    UnresolvedSubject,
    grace_periods,
    merge_subjects,
)
from .tokens import (
    TOKEN_KEY,
    TOKEN_KEY_KEY,
    TOKEN_PROOF_ANNOTATION,
    render_token_key_secret,
    render_token_secret,
    token_owner_references,
)

__all__ = [
    "CONFIG_KEY",
    "RESTART_HASH_ANNOTATION",
    "TOKEN_KEY",
    "TOKEN_KEY_KEY",
    "TOKEN_PROOF_ANNOTATION",
    "ChildRef",
    "Grace",
    "Manifest",
    "PolicyBinding",
    "RenderResult",
    "SubjectConflict",
    "UnresolvedSubject",
    "config_secret_name",
    "gateway_config",
    "gateway_name",
    "grace_periods",
    "labels",
    "merge_subjects",
    "render_core_children",
    "render_token_key_secret",
    "render_token_secret",
    "restart_hash",
    "selector_labels",
    "token_key_secret_name",
    "token_owner_references",
    "token_secret_name",
]
