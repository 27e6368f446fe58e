"""Typed params and results of every QRC method the product models.

`parse_params` is the single validator used by the simulator and the gateway:
it turns raw JSON params into a model or raises -32602 with a message that
names the bad field but never echoes the offending value (it may be a secret).
Members a method does not know are dropped, as a Core ignores them (the vendor's
QRWC SDK sends a whole control state as a write); only the validated fields are
kept, so nothing unknown is forwarded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    SecretStr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from .errors import ErrorCode, QrcError

MAX_NAME = 256
MAX_ITEMS = 1024

# Unicode Cc (C0/C1 controls, NUL, newlines), Zl/Zp (line/paragraph separators) and Cf
# (zero-width and bidi controls, BOM, tags): invisible or line-breaking, so a name holding
# one reads as another in logs and audit lines; no Core design uses them.
_INVISIBLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2"
    "\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]"
)


def _visible(name: str) -> str:
    if _INVISIBLE.search(name):
        raise ValueError("control characters (NUL, newlines, zero-width, bidi) are not allowed")
    return name


Name = Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME), AfterValidator(_visible)]
ChangeGroupId = (
    Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME), AfterValidator(_visible)]
    | StrictInt
)
ControlValue = StrictBool | StrictInt | StrictFloat | Annotated[StrictStr, Field(max_length=4096)]
Seconds = Annotated[float, Field(ge=0, le=3600)]


class Model(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, populate_by_name=True)


class ResultModel(BaseModel):
    """Results come from a Core: tolerate fields we do not know."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


# ---- params -----------------------------------------------------------------


class EmptyParams(Model):
    pass


class LogonParams(Model):
    User: Annotated[StrictStr, Field(max_length=MAX_NAME)]
    Password: SecretStr = Field(max_length=4096)


class GetComponentsParams(
    RootModel[Annotated[StrictStr, Field(max_length=MAX_NAME)] | EmptyParams]
):
    """None, `{}`, or a string: the vendor's QRWC SDK sends `"test"`, which a Core accepts."""

    root: Annotated[StrictStr, Field(max_length=MAX_NAME)] | EmptyParams = EmptyParams()


class ControlGetParams(RootModel[list[Name]]):
    root: Annotated[list[Name], Field(min_length=1, max_length=MAX_ITEMS)]


class _ValueWrite(Model):
    # The validator below, for JSON Schema readers (the gateway's OpenAPI document).
    model_config = ConfigDict(
        json_schema_extra={"anyOf": [{"required": [k]} for k in ("Value", "Position", "String")]}
    )
    Value: ControlValue | None = None
    Position: Annotated[float, Field(ge=0, le=1)] | None = None
    String: Annotated[StrictStr, Field(max_length=4096)] | None = None
    Ramp: Seconds | None = None

    @model_validator(mode="after")
    def _one_of_value_position_string(self) -> _ValueWrite:
        if self.Value is None and self.Position is None and self.String is None:
            raise ValueError("one of Value, Position or String is required")
        return self


class ControlSetParams(_ValueWrite):
    Name: Name


class ControlRef(Model):
    Name: Name


class ControlWrite(_ValueWrite):
    Name: Name
    Bool: Annotated[StrictBool | None, Field(exclude=True)] = None
    """Sent by the vendor's QRWC SDK beside `Value` (1 or 0); not forwarded."""


class ComponentRef(Model):
    Name: Name


class ComponentGetParams(Model):
    Name: Name
    Controls: Annotated[list[ControlRef], Field(min_length=1, max_length=MAX_ITEMS)]


class ComponentSetParams(Model):
    Name: Name
    Controls: Annotated[list[ControlWrite], Field(min_length=1, max_length=MAX_ITEMS)]
    ResponseValues: StrictBool | None = None


class ChangeGroupAddControlParams(Model):
    Id: ChangeGroupId
    Controls: Annotated[list[Name], Field(min_length=1, max_length=MAX_ITEMS)]


class ComponentControls(Model):
    Name: Name
    Controls: Annotated[list[ControlRef], Field(min_length=1, max_length=MAX_ITEMS)]


class ChangeGroupAddComponentControlParams(Model):
    Id: ChangeGroupId
    Component: ComponentControls


class ChangeGroupRemoveParams(Model):
    Id: ChangeGroupId
    Controls: Annotated[list[Name], Field(min_length=1, max_length=MAX_ITEMS)]


class ChangeGroupIdParams(Model):
    Id: ChangeGroupId


class ChangeGroupAutoPollParams(Model):
    Id: ChangeGroupId
    Rate: Annotated[float, Field(gt=0, le=3600)]


class SnapshotLoadParams(Model):
    Name: Name
    Bank: Annotated[StrictInt, Field(ge=1, le=1000)]
    Ramp: Seconds | None = None


class SnapshotSaveParams(Model):
    Name: Name
    Bank: Annotated[StrictInt, Field(ge=1, le=1000)]


# ---- results ----------------------------------------------------------------


class StatusDetail(ResultModel):
    Code: int
    String: str


class StatusResult(ResultModel):
    Platform: str
    State: Literal["Idle", "Active", "Standby"]
    DesignName: str
    DesignCode: str
    IsRedundant: bool
    IsEmulator: bool
    Status: StatusDetail


class ControlState(ResultModel):
    """A Core may leave out Position (and Value for some Text controls)."""

    Name: str
    Value: bool | int | float | str | None = None
    String: str
    Position: float | None = None


class Change(ControlState):
    Component: str | None = None


class ComponentProperty(ResultModel):
    Name: str
    Value: str | int | float | bool
    PrettyName: str | None = None


class ComponentInfo(ResultModel):
    Name: str
    Type: str
    Properties: list[ComponentProperty] = []


class ControlInfo(ResultModel):
    """The vendor's help shows Booleans without the Min/Max fields; an emulator also
    reports types beyond Boolean/Integer/Float/Text/Trigger/Time (State Trigger, Array, ...)."""

    Name: str
    Type: str
    Value: bool | int | float | str | None = None
    ValueMin: int | float | None = None
    ValueMax: int | float | None = None
    StringMin: str | None = None
    StringMax: str | None = None
    String: str
    Position: float | None = None
    Direction: Literal["Read/Write", "Read Only", "Write Only"]
    Choices: list[str] | None = None


class ComponentControlsResult(ResultModel):
    Name: str
    Controls: list[ControlInfo]


class ComponentValuesResult(ResultModel):
    Name: str
    Controls: list[ControlState]


class ChangeGroupPollResult(ResultModel):
    Id: str | int
    Changes: list[Change]


# ---- registry ---------------------------------------------------------------

MethodKind = Literal["session", "read", "write", "change_group"]


@dataclass(frozen=True, slots=True)
class MethodTraits:
    """What the gateway needs to know about a method, in one place.

    `write`: changes the Core (always audited; methods the product does not model count
    as writes). `retryable`: has no side effect, so it may be sent again on another
    connection when the socket it went out on dropped. `change_group`: answered by the
    gateway's own change groups, never forwarded. `group_add`: adds controls to a change
    group, so each control also needs read permission. `before_logon`: a Core answers it
    on a socket that has not logged on.
    """

    write: bool = False
    retryable: bool = False
    change_group: bool = False
    group_add: bool = False
    before_logon: bool = False


UNMODELLED = MethodTraits(write=True)
"""Traits of a method the product does not model (forwarded only when a rule names it)."""
UNMODELLED_CHANGE_GROUP = MethodTraits(write=True, change_group=True)
"""An unknown `ChangeGroup.*` method: the gateway's change groups refuse it."""

_TRAITS_OF_KIND: dict[str, MethodTraits] = {
    "read": MethodTraits(retryable=True),
    "write": MethodTraits(write=True),
    "change_group": MethodTraits(change_group=True),
}


@dataclass(frozen=True, slots=True)
class MethodSpec:
    name: str
    kind: MethodKind
    params: type[BaseModel] | None
    result: TypeAdapter[Any]
    traits: MethodTraits


def _spec(
    name: str,
    kind: MethodKind,
    params: type[BaseModel] | None,
    result: Any,
    traits: MethodTraits | None = None,
) -> MethodSpec:
    return MethodSpec(
        name, kind, params, TypeAdapter(result), traits or _TRAITS_OF_KIND.get(kind, MethodTraits())
    )


_GROUP_ADD = MethodTraits(change_group=True, group_add=True)
_BEFORE_LOGON = MethodTraits(retryable=True, before_logon=True)

METHODS: dict[str, MethodSpec] = {
    s.name: s
    for s in (
        _spec("Logon", "session", LogonParams, Literal[True]),
        _spec("NoOp", "session", EmptyParams, Literal[True], _BEFORE_LOGON),
        _spec("StatusGet", "read", None, StatusResult, _BEFORE_LOGON),
        _spec("Control.Get", "read", ControlGetParams, list[ControlState]),
        _spec("Control.Set", "write", ControlSetParams, bool | ControlState),
        _spec("Component.GetComponents", "read", GetComponentsParams, list[ComponentInfo]),
        _spec("Component.GetControls", "read", ComponentRef, ComponentControlsResult),
        _spec("Component.Get", "read", ComponentGetParams, ComponentValuesResult),
        _spec("Component.Set", "write", ComponentSetParams, bool | list[Change]),
        _spec(
            "ChangeGroup.AddControl", "change_group", ChangeGroupAddControlParams, bool, _GROUP_ADD
        ),
        _spec(
            "ChangeGroup.AddComponentControl",
            "change_group",
            ChangeGroupAddComponentControlParams,
            bool,
            _GROUP_ADD,
        ),
        _spec("ChangeGroup.Remove", "change_group", ChangeGroupRemoveParams, bool),
        _spec("ChangeGroup.Poll", "change_group", ChangeGroupIdParams, ChangeGroupPollResult),
        _spec("ChangeGroup.AutoPoll", "change_group", ChangeGroupAutoPollParams, bool),
        _spec("ChangeGroup.Invalidate", "change_group", ChangeGroupIdParams, bool),
        _spec("ChangeGroup.Clear", "change_group", ChangeGroupIdParams, bool),
        _spec("ChangeGroup.Destroy", "change_group", ChangeGroupIdParams, bool),
        _spec("Snapshot.Load", "write", SnapshotLoadParams, bool),
        _spec("Snapshot.Save", "write", SnapshotSaveParams, bool),
    )
}


def traits_of(method: str) -> MethodTraits:
    spec = METHODS.get(method)
    if spec is not None:
        return spec.traits
    return UNMODELLED_CHANGE_GROUP if method.startswith("ChangeGroup.") else UNMODELLED


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"] if p != "root") or "params"
        parts.append(f"{loc}: {err['msg']}")
    return "Invalid params: " + "; ".join(parts)


def logon_credentials(raw: Any) -> tuple[str, str]:
    """`(User, Password)` of a Logon's params. `User` may be left out (a bearer-style
    Logon); a missing `Password` or a member of the wrong type is -32602 naming it, so a
    misspelt member (`Pin`) reads as what it is, not as a wrong password."""
    if isinstance(raw, dict) and "User" not in raw:
        raw = {**raw, "User": ""}
    params = parse_params("Logon", raw)
    assert isinstance(params, LogonParams)
    return params.User, params.Password.get_secret_value()


def parse_params(method: str, raw: Any) -> BaseModel | None:
    """Validate the params of a modelled method; returns None for methods without params."""
    spec = METHODS.get(method)
    if spec is None:
        raise QrcError(ErrorCode.METHOD_NOT_FOUND, f"Method not found: {method[:64]}")
    if spec.params is None:
        if raw in (None, 0, {}, []):
            return None
        raise QrcError(ErrorCode.INVALID_PARAMS, "Invalid params: expected none")
    if raw is None and spec.params in (EmptyParams, GetComponentsParams):
        raw = {}
    try:
        # model_validate's own work, without its Python wrapper
        return spec.params.__pydantic_validator__.validate_python(raw)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise QrcError(ErrorCode.INVALID_PARAMS, _describe(exc)) from None
