"""The gateway config model: defaults, validation messages naming the field, round trips."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from qsys_protocol.config import (
    ConfigError,
    GatewayConfig,
    RateConfig,
    dump_config,
    load_config,
    parse_config,
)

HASH_A = "a" * 64
HASH_B = "b" * 64


def minimal() -> dict[str, Any]:
    return {"core": {"host": "127.0.0.1"}}


def full() -> dict[str, Any]:
    return {
        "core": {
            "host": "core-hall.av.example",
            "port": 1711,
            "redundantHost": "core-hall-b.av.example",
            "usernameFile": None,
            "passwordFile": None,
            "keepAliveSeconds": 15,
            "requestTimeoutSeconds": 3,
        },
        "listen": {
            "host": "127.0.0.1",
            "http": 8081,
            "qrc": None,
            "metrics": 9091,
            "tls": {"certFile": "/tls/tls.crt", "keyFile": "/tls/tls.key"},
        },
        "limits": {
            "maxClients": 10,
            "maxMessageBytes": 4096,
            "rate": {"requestsPerSecond": 5, "burst": 10},
            "storage": "redis://redis.av.svc:6379/2",
        },
        "audit": {"logReads": True, "path": "/var/log/audit.jsonl"},
        "cors": {"allowedOrigins": ["https://panel.example"]},
        "subjects": [
            {
                "name": "room-101-panel",
                "tokenSha256": HASH_A,
                "rate": {"requestsPerSecond": 10, "burst": 20},
                "rules": [
                    {
                        "methods": ["Component.Set"],
                        "components": ["Zone*"],
                        "controls": ["gain", "mute"],
                        "valueRange": {"min": -60, "max": 0},
                    }
                ],
            },
            {"name": "ai-agent", "tokenSha256": HASH_B},
        ],
    }


def set_path(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    node: Any = data
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


def test_defaults_match_the_spec() -> None:
    cfg = parse_config(minimal())
    assert cfg.core.port == 1710
    assert cfg.core.redundantHost is None
    assert cfg.core.keepAliveSeconds == 20
    assert cfg.core.requestTimeoutSeconds == 5
    assert (cfg.listen.host, cfg.listen.http, cfg.listen.qrc, cfg.listen.metrics) == (
        "0.0.0.0",
        8080,
        1710,
        9090,
    )
    assert cfg.listen.tls is None
    assert cfg.listen.qrcOnCoreLoss == "close"
    assert cfg.limits.maxClients == 1000
    assert cfg.limits.maxMessageBytes == 262144
    assert cfg.limits.rate == RateConfig(requestsPerSecond=20, burst=500)
    assert cfg.limits.storage == "memory"
    assert cfg.audit.logReads is False
    assert cfg.audit.path == "-"
    assert cfg.cors.allowedOrigins == []
    assert cfg.subjects == []


def test_rule_defaults_are_wildcards() -> None:
    data = minimal()
    data["subjects"] = [{"name": "s", "tokenSha256": HASH_A, "rules": [{"methods": ["NoOp"]}]}]
    rule = parse_config(data).subjects[0].rules[0]
    assert rule.components == ["*"]
    assert rule.controls == ["*"]
    assert rule.valueRange is None


def test_full_config_parses() -> None:
    cfg = parse_config(full())
    assert cfg.listen.qrc is None
    assert cfg.limits.storage == "redis://redis.av.svc:6379/2"
    assert cfg.subjects[0].rules[0].valueRange is not None
    assert cfg.subjects[0].rules[0].valueRange.min == -60


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("core.host", "", "core.host"),
        ("core.host", "bad host!", "core.host"),
        ("core.port", 0, "core.port"),
        ("core.port", 65536, "core.port"),
        ("core.redundantHost", "a b", "core.redundantHost"),
        ("core.keepAliveSeconds", 0.5, "core.keepAliveSeconds"),
        ("core.keepAliveSeconds", 60, "core.keepAliveSeconds"),
        ("core.requestTimeoutSeconds", 0, "core.requestTimeoutSeconds"),
        ("core.requestTimeoutSeconds", float("nan"), "core.requestTimeoutSeconds"),
        ("core.unknown", 1, "core.unknown"),
        ("listen.http", -1, "listen.http"),
        ("listen.qrc", 70000, "listen.qrc"),
        ("listen.metrics", "x", "listen.metrics"),
        ("listen.tls", {"certFile": "c"}, "listen.tls.keyFile"),
        ("listen.qrcOnCoreLoss", "drop", "listen.qrcOnCoreLoss"),
        ("limits.maxClients", 0, "limits.maxClients"),
        ("limits.maxMessageBytes", 100, "limits.maxMessageBytes"),
        ("limits.maxMessageBytes", 32 * 1024 * 1024, "limits.maxMessageBytes"),
        ("limits.rate.requestsPerSecond", 0, "limits.rate.requestsPerSecond"),
        ("limits.rate.requestsPerSecond", float("inf"), "limits.rate.requestsPerSecond"),
        ("limits.rate.burst", 0, "limits.rate.burst"),
        ("limits.storage", "mysql://x", "limits.storage"),
        ("limits.storage", "redis://", "limits.storage"),
        ("limits.storage", "redis://host:port/db", "limits.storage"),
        ("limits.storage", "redis+sentinel://s1:26379", "limits.storage"),
        ("limits.storage", "redis+sentinel:///qsys", "limits.storage"),
        ("limits.storage", "redis+sentinel://s1:26379/q s", "limits.storage"),
        ("limits.storage", "redis+sentinel://s1:x/qsys", "limits.storage"),
        ("limits.storage", "redis+sentinel://s1:26379,s2:70000/qsys", "limits.storage"),
        ("limits.storage", "redis+sentinel://s1:0/qsys", "limits.storage"),
        ("limits.storage", "redis://r:0/0", "limits.storage"),
        ("qsysCore", {"namespace": "av", "name": "hall/x"}, "qsysCore.name"),
        ("qsysCore", {"namespace": "AV", "name": "hall"}, "qsysCore.namespace"),
        ("audit.logReads", "maybe", "audit.logReads"),
        ("cors.allowedOrigins", [""], "cors.allowedOrigins.0"),
        ("subjects.0.name", "Room 101", "subjects.0.name"),
        ("subjects.0.name", "-room", "subjects.0.name"),
        ("subjects.0.tokenSha256", "A" * 64, "subjects.0.tokenSha256"),
        ("subjects.0.tokenSha256", "a" * 63, "subjects.0.tokenSha256"),
        ("subjects.0.rate.burst", -1, "subjects.0.rate.burst"),
        ("subjects.0.rules.0.methods", [], "subjects.0.rules.0.methods"),
        ("subjects.0.rules.0.methods", [""], "subjects.0.rules.0.methods.0"),
        ("subjects.0.rules.0.components", [], "subjects.0.rules.0.components"),
        ("subjects.0.rules.0.controls", ["x" * 257], "subjects.0.rules.0.controls.0"),
        ("subjects.0.rules.0.valueRange", {"min": 1, "max": 0}, "subjects.0.rules.0.valueRange"),
        ("subjects.0.rules.0.extra", True, "subjects.0.rules.0.extra"),
    ],
)
def test_invalid_field_is_named(path: str, value: Any, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(set_path(full(), path, value))
    message = str(err.value)
    assert message.startswith("invalid gateway config: ")
    assert f"{field}:" in message


def test_missing_core_is_named() -> None:
    with pytest.raises(ConfigError, match=r"core: Field required"):
        parse_config({})


def test_not_a_mapping_is_refused() -> None:
    with pytest.raises(ConfigError):
        parse_config(["core"])


@pytest.mark.parametrize(
    "storage",
    [
        "memory",
        "redis://redis:6379/0",
        "redis://10.0.0.1",
        "rediss://r.example:6380/3",
        "redis+sentinel://s1:26379/qsys",
        "redis+sentinel://:secret@s1:26379,s2,[::1]:26380/qsys-primary/2",
    ],
)
def test_storage_accepts_memory_and_redis_uris(storage: str) -> None:
    data = set_path(minimal(), "limits", {"storage": storage})
    assert parse_config(data).limits.storage == storage


def test_duplicate_subject_names_are_refused() -> None:
    data = full()
    data["subjects"][1]["name"] = "room-101-panel"
    with pytest.raises(ConfigError, match="duplicate subject name 'room-101-panel'"):
        parse_config(data)


def test_shared_token_is_refused_without_echoing_the_hash() -> None:
    data = full()
    data["subjects"][1]["tokenSha256"] = HASH_A
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert "shares its token" in str(err.value)
    assert HASH_A not in str(err.value)


def test_model_is_frozen() -> None:
    cfg = parse_config(minimal())
    with pytest.raises(ValueError, match="frozen"):
        cfg.core.port = 1  # type: ignore[misc]


def test_subject_lookup_and_rate_override() -> None:
    cfg = parse_config(full())
    panel = cfg.subject("room-101-panel")
    agent = cfg.subject("ai-agent")
    assert panel is not None
    assert agent is not None
    assert cfg.subject("nobody") is None
    assert cfg.rate_for(panel) == RateConfig(requestsPerSecond=10, burst=20)
    assert cfg.rate_for(agent) == cfg.limits.rate


def test_dump_parse_round_trip() -> None:
    cfg = parse_config(full())
    again = parse_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg
    assert dump_config(again) == dump_config(cfg)


def test_load_config_from_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(dump_config(parse_config(full())), "utf-8")
    assert load_config(path) == parse_config(full())


def test_load_config_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("core: [unclosed", "utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("core: {host: h, port: 0}\n", "utf-8")
    with pytest.raises(ConfigError, match=r"core\.port"):
        load_config(wrong)


def test_credentials_from_files_win_over_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = tmp_path / "username"
    password = tmp_path / "password"
    user.write_text("admin\n", "utf-8")
    password.write_text(" s3cret \n", "utf-8")
    monkeypatch.setenv("QSYS_CORE_USERNAME", "env-user")
    monkeypatch.setenv("QSYS_CORE_PASSWORD", "env-pass")
    data = set_path(minimal(), "core.usernameFile", str(user))
    data = set_path(data, "core.passwordFile", str(password))
    name, secret = parse_config(data).core.credentials()
    assert name == "admin"
    assert secret is not None
    assert secret.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(secret)


def test_credentials_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QSYS_CORE_USERNAME", "env-user")
    monkeypatch.setenv("QSYS_CORE_PASSWORD", "env-pass")
    name, secret = parse_config(minimal()).core.credentials()
    assert name == "env-user"
    assert secret is not None
    assert secret.get_secret_value() == "env-pass"


def test_empty_credential_file_falls_back_to_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "password"
    empty.write_text("\n", "utf-8")
    monkeypatch.setenv("QSYS_CORE_PASSWORD", "env-pass")
    monkeypatch.delenv("QSYS_CORE_USERNAME", raising=False)
    data = set_path(minimal(), "core.passwordFile", str(empty))
    name, secret = parse_config(data).core.credentials()
    assert name is None
    assert secret is not None
    assert secret.get_secret_value() == "env-pass"


def test_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QSYS_CORE_USERNAME", raising=False)
    monkeypatch.delenv("QSYS_CORE_PASSWORD", raising=False)
    assert parse_config(minimal()).core.credentials() == (None, None)


def test_json_schema_is_available_for_the_operator() -> None:
    schema = GatewayConfig.model_json_schema()
    assert "core" in schema["required"]


def test_keyed_subjects_need_a_readable_key_file(tmp_path: Path) -> None:
    data = minimal()
    data["subjects"] = [{"name": "s", "tokenHmacSha256": HASH_A}]
    with pytest.raises(ConfigError, match=r"auth\.tokenKeyFile is not set"):
        parse_config(data)
    data["auth"] = {"tokenKeyFile": str(tmp_path / "token-key")}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"auth\.tokenKeyFile: cannot read"):
        load_config(path)
    (tmp_path / "token-key").write_text("short\n")
    with pytest.raises(ConfigError, match="fewer than 32 bytes"):
        load_config(path)
    (tmp_path / "token-key").write_text("k" * 43 + "\n")
    config = load_config(path)
    assert config.auth.token_key() == b"k" * 43
    assert config.subjects[0].token_hash == HASH_A
