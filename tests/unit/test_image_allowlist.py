"""The gateway image allow-list: reference parsing as the runtime pulls, and admission."""

from __future__ import annotations

import pytest

from qsys_operator.images import AllowedImage, ImageRef, allow_list, image_problem, parse_image
from qsys_operator.settings import DEFAULT_GATEWAY_IMAGE, OperatorSettings

DIGEST = "sha256:" + "0123456789abcdef" * 4
OTHER = "sha256:" + "f" * 64


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("gateway", ImageRef("docker.io/library/gateway", None, None)),
        ("gateway:1", ImageRef("docker.io/library/gateway", "1", None)),
        ("docker.io/library/gateway", ImageRef("docker.io/library/gateway", None, None)),
        ("index.docker.io/library/gateway", ImageRef("docker.io/library/gateway", None, None)),
        ("me/gateway:1", ImageRef("docker.io/me/gateway", "1", None)),
        ("GHCR.io/qsys-operator/gateway", ImageRef("ghcr.io/qsys-operator/gateway", None, None)),
        ("localhost/gw", ImageRef("localhost/gw", None, None)),
        ("localhost:5000/a/b:c", ImageRef("localhost:5000/a/b", "c", None)),
        (
            f"ghcr.io/qsys-operator/gateway:0.1.0@{DIGEST}",
            ImageRef("ghcr.io/qsys-operator/gateway", "0.1.0", DIGEST),
        ),
        ("[2001:db8::1]:5000/gw", ImageRef("[2001:db8::1]:5000/gw", None, None)),
    ],
)
def test_references_are_normalised_as_the_runtime_pulls_them(
    reference: str, expected: ImageRef
) -> None:
    assert parse_image(reference) == expected


@pytest.mark.parametrize(
    "bad",
    ["", "Gateway", "gw:", "gw@sha256:abc", "gw:tag with space", "a//b", "gw@md5:" + "0" * 32],
)
def test_malformed_references_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not an image reference"):
        parse_image(bad)


def test_default_allow_list_is_the_default_images_repository_and_digest() -> None:
    assert allow_list("ghcr.io/q/gateway:0.1.0", ()) == (AllowedImage("ghcr.io/q/gateway", None),)
    assert allow_list(f"ghcr.io/q/gateway@{DIGEST}", ()) == (
        AllowedImage("ghcr.io/q/gateway", DIGEST),
    )
    assert allow_list("x/y:1", ["registry.example/gw", f"r.example/gw@{DIGEST}"]) == (
        AllowedImage("registry.example/gw", None),
        AllowedImage("r.example/gw", DIGEST),
    )
    with pytest.raises(ValueError, match="not a tag"):
        allow_list("x/y:1", ["r.example/gw:latest"])


def _problem(image: str | None, default: str, *entries: str) -> str | None:
    return image_problem(image, default, allow_list(default, entries))


def test_only_allowed_images_run() -> None:
    default = "ghcr.io/q/gateway:0.1.0"
    assert _problem(None, default) is None
    assert _problem(default, default) is None
    assert _problem("ghcr.io/q/gateway:0.2.0", default) is None  # same repository
    refused = _problem("evil.example/gateway:0.1.0", default)
    assert refused is not None
    assert refused.startswith("spec.gateway.image evil.example/gateway:0.1.0 is not on")
    assert "allowed: ghcr.io/q/gateway" in refused
    # Look-alikes are other repositories.
    for image in (
        "ghcr.io/q/gateway-evil:1",
        "ghcr.io/q/gateway/evil:1",
        "ghcr.io.evil.example/q/gateway:1",
        "ghcr.io:443/q/gateway:1",
        "q/gateway:0.1.0",
    ):
        assert _problem(image, default) is not None, image
    bad = _problem("not a reference", default)
    assert bad is not None
    assert "not a valid image reference" in bad


def test_a_digest_entry_admits_only_that_digest() -> None:
    default = f"ghcr.io/q/gateway@{DIGEST}"
    assert _problem(f"ghcr.io/q/gateway:9@{DIGEST}", default) is None
    assert _problem(f"ghcr.io/q/gateway@{OTHER}", default) is not None
    assert _problem("ghcr.io/q/gateway:0.1.0", default) is not None  # a tag can move
    # A configured list replaces the derived entry (the default image itself still runs).
    assert _problem("ghcr.io/q/gateway:2", default, "mirror.example/gw") is not None
    assert _problem(None, default, "mirror.example/gw") is None
    assert _problem("mirror.example/gw:2", default, "mirror.example/gw") is None


def test_settings_default_admits_the_charts_own_gateway() -> None:
    settings = OperatorSettings()
    assert (
        image_problem(DEFAULT_GATEWAY_IMAGE, settings.gateway_image, settings.allowed_images)
        is None
    )
    assert image_problem("busybox", settings.gateway_image, settings.allowed_images) is not None
