"""The images' configuration (hack/images.py, the one image builder) agrees with what
deploys and runs them: the entry points pyproject installs, the user the operator
renders, the config path it mounts, the ports the chart and the gateway Deployment
use, and the image names the chart and the operator default to. The built images
themselves: tests/integration/test_images.py."""

from __future__ import annotations

import tomllib

import yaml
from chart_support import CHART, REPO
from unit_support import hack_script

from qsys_operator.render.common import HTTP_PORT, METRICS_PORT, QRC_PORT
from qsys_operator.render.config import CONFIG_PATH
from qsys_operator.render.deployment import RUN_AS
from qsys_operator.settings import DEFAULT_GATEWAY_IMAGE

images = hack_script("images")
COMPONENTS = {c.name: c for c in images.COMPONENTS}


def chart_values() -> dict[str, object]:
    values: dict[str, object] = yaml.safe_load((CHART / "values.yaml").read_text("utf-8"))
    return values


def test_every_image_runs_an_entry_point_pyproject_installs() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]["scripts"]
    assert {c.script for c in COMPONENTS.values()} == set(scripts)


def test_images_run_as_the_user_the_operator_renders() -> None:
    assert f"{RUN_AS}:{RUN_AS}" == images.RUN_AS
    assert RUN_AS != 0
    env = dict(e.split("=", 1) for e in images.ENV)
    assert env["PATH"].split(":")[0] == f"{images.VENV}/bin", "the operator runs qsys-gateway"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1", "read-only root filesystem"


def test_gateway_image_reads_the_config_the_operator_mounts() -> None:
    gateway = COMPONENTS["gateway"]
    assert gateway.cmd == ("--config", CONFIG_PATH)
    assert set(gateway.ports) == {HTTP_PORT, QRC_PORT, METRICS_PORT}


def test_operator_image_exposes_the_chart_ports() -> None:
    values = chart_values()
    ports = {values[k]["port"] for k in ("metrics", "health")}  # type: ignore[index]
    assert set(COMPONENTS["operator"].ports) == ports


def test_image_names_are_the_chart_and_operator_defaults() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text("utf-8"))
    values = chart_values()
    names = images.image_names()
    for key, component in (("image", "operator"), ("gatewayImage", "gateway")):
        image = values[key]
        assert isinstance(image, dict)
        assert f"{image['repository']}:{image['tag'] or chart['appVersion']}" == names[component]
    assert names["gateway"] == DEFAULT_GATEWAY_IMAGE
