"""What an MCP handler (a tool, a resource) runs with: the caller, admission's MCP side
and the design cache, looked up on the caller's behalf."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qsys_protocol.qrc.methods import ComponentInfo

from ..policy import Policy
from .admission import Caller, McpAdmission, McpCaller
from .design import ControlSpec, Design, Fetch


@dataclass(frozen=True, slots=True)
class Ctx:
    admission: McpAdmission
    design: Design
    caller: McpCaller

    @property
    def subject(self) -> str:
        return self.caller.subject.name

    @property
    def policy(self) -> Policy:
        return self.admission.policy

    def _fetch(self) -> Fetch:
        return lambda method, params: self.admission.design(self.caller, method, params)

    async def components(self) -> list[ComponentInfo]:
        return await self.design.components(self._fetch())

    async def controls(self, component: str) -> dict[str, ControlSpec]:
        return await self.design.controls(component, self._fetch())

    async def call(self, method: str, params: Any, subscriber: Caller | None = None) -> Any:
        return await self.admission.call(self.caller, method, params, subscriber)
