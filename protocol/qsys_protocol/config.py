"""The gateway config (`gateway.yaml`): one model, written by the operator, read by the gateway.

Field names are exactly the YAML keys of the product spec, so the same model
validates what the operator renders and what the gateway loads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

MIN_TOKEN_KEY_BYTES = 32
SUBJECT_NAME_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
HostName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:_\[\]-]+$")]
Port = Annotated[int, Field(ge=1, le=65535)]
Glob = Annotated[str, Field(min_length=1, max_length=256)]


class Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False, frozen=True, use_attribute_docstrings=True
    )


_SENTINEL = r"(\[[0-9A-Fa-f:.]+\]|[^\s/:@,\[\]]+)(:[0-9]{1,5})?"
STORAGE_URI = (
    r"^(memory|rediss?://[^\s/]+(:[0-9]+)?(/[0-9]+)?"
    rf"|redis\+sentinel://([^\s/@]*@)?{_SENTINEL}(,{_SENTINEL})*/[A-Za-z0-9._-]{{1,128}}"
    r"(/[0-9]+)?)$"
)
"""`limits.storage`: `memory`, Redis, or Redis behind Sentinel (the `limits` library's
URI: sentinel addresses, comma-separated, then the monitored primary's name). The
operator's QSysCore schema uses the same pattern."""


class RateConfig(Model):
    requestsPerSecond: Annotated[float, Field(gt=0, le=100000)] = 20
    """Sustained calls per second per subject (> 0, max 100000)."""
    burst: Annotated[int, Field(ge=1, le=1000000)] = 500
    """Calls per subject allowed at once (1-1000000). Sized for a panel SDK's
    start-up of a few hundred calls (docs/gateway.md, "Rate limits")."""


class TlsConfig(Model):
    certFile: str
    keyFile: str


class CoreConfig(Model):
    host: HostName
    port: Port = 1710
    redundantHost: HostName | None = None
    usernameFile: str | None = None
    passwordFile: str | None = None
    keepAliveSeconds: Annotated[float, Field(ge=1, le=55)] = 20
    requestTimeoutSeconds: Annotated[float, Field(gt=0, le=300)] = 5

    def credentials(self) -> tuple[str | None, SecretStr | None]:
        """QRC Logon credentials from the files, else env QSYS_CORE_USERNAME/QSYS_CORE_PASSWORD."""
        user = _read_secret_file(self.usernameFile) or os.environ.get("QSYS_CORE_USERNAME")
        password = _read_secret_file(self.passwordFile) or os.environ.get("QSYS_CORE_PASSWORD")
        return (user or None, SecretStr(password) if password else None)


def _read_secret_file(path: str | None) -> str | None:
    if not path:
        return None
    return Path(path).read_text("utf-8").strip() or None


class ListenConfig(Model):
    host: str = "0.0.0.0"
    http: Port = 8080
    qrc: Port | None = 1710
    metrics: Port = 9090
    tls: TlsConfig | None = None
    qrcOnCoreLoss: Literal["keep", "close"] = "close"
    """What raw QRC clients see while the Core is unreachable: `close` mirrors a Core
    (their sockets close, new ones are refused until it is back); `keep` holds them and
    answers -32050. WebSocket and HTTP clients always get -32050 (docs/gateway.md)."""


class AttackLimits(BaseModel):
    """Bounds against abusive clients (docs/security.md has each one's attack and the
    arithmetic behind its default). Shared by the gateway config (`limits`) and the
    QSysCore spec (`spec.limits`), which passes them through unchanged."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    maxHttpConnections: Annotated[int, Field(ge=16, le=100000)] = 4096
    """Open connections on the HTTP listener (WebSocket included); see docs/security.md."""
    maxPendingConnectionsPerSource: Annotated[int, Field(ge=1, le=100000)] = 64
    """HTTP connections of one source address that have not sent a request head yet."""
    headerTimeoutSeconds: Annotated[float, Field(gt=0, le=300)] = 10
    """A request head must be complete this long after connect or the previous response."""
    bodyTimeoutSeconds: Annotated[float, Field(gt=0, le=300)] = 10
    """Seconds a request body may take to arrive once its head is in."""
    maxBatchCalls: Annotated[int, Field(ge=1, le=10000)] = 100
    """Calls in one batch, on every transport; a batch costs its size in rate budget."""
    maxUnauthenticatedClients: Annotated[int, Field(ge=1, le=100000)] = 256
    """WebSocket/QRC connections not logged on yet, besides the `maxClients` logged-on ones."""
    maxUnauthenticatedClientsPerSource: Annotated[int, Field(ge=1, le=100000)] = 64
    """Connections not logged on yet from one source address; the oldest is evicted for a
    newcomer."""
    logonTimeoutSeconds: Annotated[float, Field(gt=0, le=300)] = 10
    """A connection must log on within this long of connecting (absolute, not per byte)."""
    maxChangeGroupsPerConnection: Annotated[int, Field(ge=1, le=10000)] = 64
    """Change groups one WebSocket/QRC connection (or one subject's HTTP session) may hold."""
    maxChangeGroupsPerSubject: Annotated[int, Field(ge=1, le=100000)] = 5000
    """Change groups all connections of one subject may hold together (the gateway: 10,000)."""
    maxHubControlsPerSubject: Annotated[int, Field(ge=1, le=4096)] = 1024
    """Distinct controls the change groups of one subject may watch together, of the
    4,096 the gateway's shared Core groups hold (default: a quarter of them)."""
    maxPendingCoreCallsPerSubject: Annotated[int, Field(ge=1, le=512)] = 128
    """Calls of one subject pending on the Core at once, of the 512 the gateway's two Core
    connections queue (default: a quarter); further calls wait within their timeout."""

    def attack_limits(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in AttackLimits.model_fields}


class LimitsConfig(Model, AttackLimits):
    maxClients: Annotated[int, Field(ge=1, le=100000)] = 1000
    maxMessageBytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 262144
    rate: RateConfig = RateConfig()
    storage: str = "memory"
    """`memory` (per replica), `redis://host:port/db`, `rediss://...`, or Redis Sentinel:
    `redis+sentinel://host:port[,host:port...]/primary-name[/db]`."""

    @field_validator("storage")
    @classmethod
    def _storage_uri(cls, v: str) -> str:
        if re.match(STORAGE_URI, v) and all(
            0 < int(port) < 65536 for port in re.findall(r":([0-9]{1,5})(?=[,/]|$)", v)
        ):
            return v
        raise ValueError(
            'must be "memory", redis://host:port/db or redis+sentinel://host:port/primary-name'
        )


class AuditConfig(Model):
    logReads: bool = False
    path: str = "-"


class CorsConfig(Model):
    allowedOrigins: list[Annotated[str, Field(min_length=1, max_length=512)]] = []


class McpConfig(Model):
    """`/v1/mcp` (docs/mcp.md); off by default, switched on and off by a reload."""

    enabled: bool = False
    maxSessionsPerSubject: Annotated[int, Field(ge=1, le=1000)] = 8
    maxStreamsPerSubject: Annotated[int, Field(ge=1, le=1000)] = 16
    sessionIdleSeconds: Annotated[float, Field(ge=10, le=86400)] = 1800


class ValueRange(Model):
    min: float | None = None
    """Smallest value a write may set (inclusive). Unset: no lower bound."""
    max: float | None = None
    """Largest value a write may set (inclusive). Unset: no upper bound."""

    @model_validator(mode="after")
    def _ordered(self) -> ValueRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not be greater than max")
        return self


class Rule(Model):
    """One allow rule: a call passes when some rule matches every target it touches."""

    methods: Annotated[list[Glob], Field(min_length=1)]
    """QRC methods this rule allows, globs, e.g. `Component.Get*`, `StatusGet`."""
    components: Annotated[list[Glob], Field(min_length=1)] = ["*"]
    """Component names (globs) the rule covers; `*` also covers Named Controls."""
    controls: Annotated[list[Glob], Field(min_length=1)] = ["*"]
    """Control names (globs) the rule covers within those components."""
    valueRange: ValueRange | None = None
    """Writes must set a numeric Value within this range (Position and String writes are
    refused). Unset: any value."""


def _source_cidr(value: str) -> str:
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise ValueError(
            "must be an IPv4 or IPv6 network with no host bits set, e.g. 192.0.2.0/28"
        ) from None
    if network.prefixlen == 0:
        raise ValueError("must not be a default route (/0): that would admit every address")
    return str(network)


SourceCIDR = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_source_cidr)]
"""A network a source-bound subject's legacy clients connect from (written canonically)."""
MAX_SOURCE_CIDRS = 32


HexDigest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def token_hmac(key: bytes, token: str) -> str:
    """`subjects[].tokenHmacSha256`: HMAC-SHA256 of the token under the core's token key."""
    return hmac.new(key, token.encode("utf-8"), hashlib.sha256).hexdigest()


class AuthConfig(Model):
    tokenKeyFile: str | None = None
    """The key of `subjects[].tokenHmacSha256`, kept apart from this file (see docs/security.md)."""

    def token_key(self) -> bytes | None:
        if not self.tokenKeyFile:
            return None
        try:
            key = Path(self.tokenKeyFile).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(
                f"auth.tokenKeyFile: cannot read {self.tokenKeyFile}: {exc.strerror}"
            ) from None
        if len(key) < MIN_TOKEN_KEY_BYTES:
            raise ConfigError(
                f"auth.tokenKeyFile: {self.tokenKeyFile} holds fewer than "
                f"{MIN_TOKEN_KEY_BYTES} bytes"
            )
        return key


SERVICE_ACCOUNT_PATTERN = (
    r"^system:serviceaccount:[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
    r":[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$"
)


class TokenReviewConfig(Model):
    """How ServiceAccount subjects are authenticated: the Kubernetes TokenReview API
    (docs/security.md). Required when some subject has `serviceAccount`."""

    audience: Annotated[str, Field(min_length=1, max_length=253)]
    """The audience a client pod's projected ServiceAccount token must carry."""
    cacheSeconds: Annotated[int, Field(ge=1, le=300)] = 30
    """A positive review is reused at most this long (and never past the token's `exp`)."""
    negativeCacheSeconds: Annotated[int, Field(ge=1, le=300)] = 5
    """A refused token is refused from the cache this long (a flood of it costs one review)."""
    maxCacheEntries: Annotated[int, Field(ge=1, le=1000000)] = 4096
    """Reviews kept (least recently used dropped first)."""
    timeoutSeconds: Annotated[float, Field(gt=0, le=60)] = 5
    """One TokenReview call; past it the client is refused (fail closed)."""
    maxInFlight: Annotated[int, Field(ge=1, le=1000)] = 16
    """TokenReview calls in flight at once, all clients; more are refused at once."""
    maxInFlightPerSource: Annotated[int, Field(ge=1, le=1000)] = 2
    """TokenReview calls in flight for one source address (identical tokens share one)."""


class SubjectConfig(Model):
    """A token holder (tokenHmacSha256, keyed; or tokenSha256, deprecated), a Kubernetes
    ServiceAccount (serviceAccount, checked with TokenReview), or, on the raw QRC port
    only, a subject admitted by its source address (sourceCIDRs): exactly one."""

    name: Annotated[str, Field(pattern=SUBJECT_NAME_PATTERN)]
    tokenHmacSha256: HexDigest | None = None
    tokenSha256: HexDigest | None = None
    """Unkeyed SHA-256, accepted until v1beta1; the operator re-renders it as tokenHmacSha256."""
    previousTokenHmacSha256: Annotated[HexDigest | None, Field(exclude_if=lambda v: v is None)] = (
        None
    )
    """The token before the last rotation, still admitted until `previousTokenUntil`."""
    previousTokenUntil: Annotated[dt.datetime | None, Field(exclude_if=lambda v: v is None)] = None
    """End of the rotation grace period (RFC 3339, with a zone); connections that
    authenticated with the previous token are closed then."""
    sourceCIDRs: Annotated[
        list[SourceCIDR], Field(max_length=MAX_SOURCE_CIDRS, exclude_if=lambda v: not v)
    ] = []
    serviceAccount: Annotated[
        str | None, Field(pattern=SERVICE_ACCOUNT_PATTERN, exclude_if=lambda v: v is None)
    ] = None
    """The Kubernetes user a TokenReview returns for the client's projected token,
    `system:serviceaccount:<namespace>:<name>` (see `tokenReview`)."""
    rate: RateConfig | None = None
    rules: list[Rule] = []

    @model_validator(mode="after")
    def _one_credential(self) -> SubjectConfig:
        given = (
            self.tokenHmacSha256,
            self.tokenSha256,
            self.sourceCIDRs or None,
            self.serviceAccount,
        )
        if sum(g is not None for g in given) != 1:
            raise ValueError(
                "set exactly one of tokenHmacSha256, tokenSha256, sourceCIDRs and serviceAccount"
            )
        if (self.previousTokenHmacSha256 is None) != (self.previousTokenUntil is None):
            raise ValueError("previousTokenHmacSha256 and previousTokenUntil go together")
        if self.previousTokenUntil is not None and self.previousTokenUntil.tzinfo is None:
            raise ValueError("previousTokenUntil needs a time zone")
        if self.previousTokenHmacSha256 is not None and self.tokenHmacSha256 is None:
            raise ValueError("previousTokenHmacSha256 needs tokenHmacSha256")
        return self

    def credential(self, token_hash: str, now: float) -> str | None:
        """Which of this subject's tokens `token_hash` is at `now` (Unix seconds):
        "current", "previous" (within the grace period) or None."""
        if token_hash == self.token_hash:
            return "current"
        until = self.previousTokenUntil
        if token_hash == self.previousTokenHmacSha256 and until and now < until.timestamp():
            return "previous"
        return None

    @property
    def token_hash(self) -> str:
        return self.tokenHmacSha256 or self.tokenSha256 or ""


class QSysCoreRef(Model):
    """The QSysCore a gateway serves (the operator writes it): rate-limit buckets in a
    shared Redis are keyed by it, so cores sharing one Redis never share a bucket."""

    namespace: Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    name: Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")]


class GatewayConfig(Model):
    qsysCore: Annotated[QSysCoreRef | None, Field(exclude_if=lambda v: v is None)] = None
    """Unset (a gateway run by hand): buckets are keyed by subject alone."""
    core: CoreConfig
    listen: ListenConfig = ListenConfig()
    limits: LimitsConfig = LimitsConfig()
    audit: AuditConfig = AuditConfig()
    cors: CorsConfig = CorsConfig()
    auth: AuthConfig = AuthConfig()
    mcp: McpConfig = McpConfig()
    tokenReview: Annotated[TokenReviewConfig | None, Field(exclude_if=lambda v: v is None)] = None
    """TokenReview settings for `serviceAccount` subjects; required iff one exists."""
    subjects: list[SubjectConfig] = []

    @model_validator(mode="after")
    def _unique_subjects(self) -> GatewayConfig:
        seen: set[str] = set()
        hashes: set[str] = set()
        accounts: set[str] = set()
        for s in self.subjects:
            if s.name in seen:
                raise ValueError(f"subjects: duplicate subject name {s.name!r}")
            if s.serviceAccount is not None:
                if s.serviceAccount in accounts:
                    raise ValueError(
                        f"subjects: subject {s.name!r} names serviceAccount "
                        f"{s.serviceAccount!r} of another subject"
                    )
                if self.tokenReview is None:
                    raise ValueError(
                        f"subjects: subject {s.name!r} has serviceAccount but "
                        "tokenReview is not set"
                    )
                accounts.add(s.serviceAccount)
            if s.token_hash and s.token_hash in hashes:
                raise ValueError(f"subjects: subject {s.name!r} shares its token with another")
            if s.tokenHmacSha256 is not None and not self.auth.tokenKeyFile:
                raise ValueError(
                    f"subjects: subject {s.name!r} has tokenHmacSha256 but "
                    "auth.tokenKeyFile is not set"
                )
            seen.add(s.name)
            if s.token_hash:
                hashes.add(s.token_hash)
        if self.tokenReview is not None and not accounts:
            raise ValueError("tokenReview: set only when some subject has serviceAccount")
        overlap = overlapping_sources(self.subjects)
        if overlap is not None:
            raise ValueError(
                f"subjects: sourceCIDRs of {overlap[0]!r} and {overlap[1]!r} overlap "
                "(a source address must name one subject)"
            )
        return self

    def subject(self, name: str) -> SubjectConfig | None:
        return next((s for s in self.subjects if s.name == name), None)

    def by_service_account(self, username: str) -> SubjectConfig | None:
        return next((s for s in self.subjects if s.serviceAccount == username), None)

    def rate_for(self, subject: SubjectConfig) -> RateConfig:
        return subject.rate or self.limits.rate


def overlapping_sources(subjects: list[SubjectConfig]) -> tuple[str, str] | None:
    """The first two subjects whose sourceCIDRs share an address, if any."""
    owned: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
    for s in subjects:
        for cidr in s.sourceCIDRs:
            net = ipaddress.ip_network(cidr)
            for other, name in owned:
                if name != s.name and net.version == other.version and net.overlaps(other):
                    return (name, s.name)
            owned.append((net, s.name))
    return None


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending field."""


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False, include_input=False)[:10]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"{loc}: {err['msg']}")
    return "; ".join(lines)


def parse_config(data: Any) -> GatewayConfig:
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid gateway config: {_describe(exc)}") from None


def load_config(path: str | Path) -> GatewayConfig:
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    config = parse_config(data)
    config.auth.token_key()  # refuse the config now if its key file is unusable
    return config


def dump_config(config: GatewayConfig) -> str:
    """Serialise for `gateway.yaml` (the operator writes this into the config Secret)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
