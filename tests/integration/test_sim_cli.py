"""`qsys-core-sim` as a real subprocess, driven by a plain blocking socket client."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from qsys_protocol.qrc.methods import METHODS

pytestmark = pytest.mark.timeout(60)


class PlainClient:
    """Blocking socket + NUL framing, nothing from the project's client code."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""
        self.next_id = 1

    def recv(self) -> Any:
        while b"\x00" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        frame, _, self.buf = self.buf.partition(b"\x00")
        return orjson.loads(frame)

    def call(self, method: str, params: Any = None) -> Any:
        rid = self.next_id
        self.next_id += 1
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        self.sock.sendall(orjson.dumps(msg) + b"\x00")
        for _ in range(100):
            reply = self.recv()
            if reply.get("id") == rid:
                assert "error" not in reply, reply
                METHODS[method].result.validate_python(reply["result"])
                return reply["result"]
        raise AssertionError("no reply")

    def close(self) -> None:
        self.sock.close()


def test_cli_serves_qrc_and_stops_on_sigterm(qsys_simulator_process: Any) -> None:
    sim = qsys_simulator_process("--idle-timeout", "30")
    client = PlainClient(sim.port)
    try:
        hello = client.recv()
        assert hello["method"] == "EngineStatus"
        status = client.call("StatusGet", 0)
        assert status["DesignName"] == "Demo Venue"
        comps = client.call("Component.GetComponents", {})
        assert "Room101 Zone1 Gain" in [c["Name"] for c in comps]
        assert (
            client.call(
                "Component.Set",
                {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "gain", "Value": -8.5}]},
            )
            is True
        )
        got = client.call(
            "Component.Get", {"Name": "Room101 Zone1 Gain", "Controls": [{"Name": "gain"}]}
        )
        assert got["Controls"][0]["Value"] == -8.5
        assert got["Controls"][0]["String"] == "-8.50dB"
    finally:
        client.close()
    sim.terminate()
    assert sim.wait(10) == 0
    out = sim.output()
    assert f"listening on 127.0.0.1:{sim.port}" in out
    assert "Traceback" not in out


def test_cli_loads_a_design_and_requires_logon(qsys_simulator_process: Any, tmp_path: Path) -> None:
    design = tmp_path / "d.yaml"
    design.write_text(
        "name: Tiny\ncomponents:\n  - name: Amp\n    controls: [{name: gain, min: -10, max: 0}]\n"
    )
    sim = qsys_simulator_process("--design", str(design), "--username", "u", "--password", "p")
    client = PlainClient(sim.port)
    try:
        assert client.recv()["params"]["DesignName"] == "Tiny"
        assert client.call("Logon", {"User": "u", "Password": "p"}) is True
        assert [c["Name"] for c in client.call("Component.GetComponents")] == ["Amp"]
    finally:
        client.close()
    assert sim.stop() == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("components: [{name: A, controls: [{name: g, min: 5, max: 1}]}]\n", "min is greater"),
        ("components: [\n", "not valid YAML"),
    ],
)
def test_cli_rejects_a_bad_design(tmp_path: Path, text: str, message: str) -> None:
    design = tmp_path / "bad.yaml"
    design.write_text(text)
    cli = Path(sys.executable).parent / "qsys-core-sim"
    result = subprocess.run(
        [str(cli), "--port", "0", "--design", str(design)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "bad design" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_standby_flag(qsys_simulator_process: Any) -> None:
    sim = qsys_simulator_process("--standby")
    client = PlainClient(sim.port)
    try:
        assert client.recv()["params"]["State"] == "Standby"
    finally:
        client.close()
