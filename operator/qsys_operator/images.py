"""Container image references and the platform's allow-list of gateway images. Pure.

The gateway pods mount the core's credentials, TLS key and token key, so the image
they run is the platform's choice, not the tenant's: `spec.gateway.image` may name
only an image the allow-list admits (docs/security.md). References are compared in
the form the container runtime pulls them (Docker's normalisation: `gateway` is
`docker.io/library/gateway`), so two spellings of one image are one image.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?"
_REFERENCE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>\w[\w.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}))?"
)
DEFAULT_DOMAIN = "docker.io"


@dataclass(frozen=True)
class ImageRef:
    repository: str
    """Normalised: registry host (lower case) and path, e.g. docker.io/library/gateway."""
    tag: str | None
    digest: str | None


def parse_image(reference: str) -> ImageRef:
    """An image reference as the runtime reads it; ValueError when it is not one."""
    match = _REFERENCE.fullmatch(reference)
    if match is None:
        raise ValueError(f"{reference[:80]!r} is not an image reference")
    name = match["name"]
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain = first.lower()
    else:
        domain, rest = DEFAULT_DOMAIN, name
    if domain == "index.docker.io":
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in rest:
        rest = f"library/{rest}"
    return ImageRef(f"{domain}/{rest}", match["tag"], match["digest"])


@dataclass(frozen=True)
class AllowedImage:
    """`REPOSITORY` (any tag or digest of it) or `REPOSITORY@DIGEST` (that digest only)."""

    repository: str
    digest: str | None

    @classmethod
    def parse(cls, entry: str) -> AllowedImage:
        ref = parse_image(entry)
        if ref.tag is not None:
            raise ValueError(
                f"{entry!r}: allow a repository or a repository@digest, not a tag "
                "(tags can be moved to other images)"
            )
        return cls(ref.repository, ref.digest)

    def admits(self, ref: ImageRef) -> bool:
        return ref.repository == self.repository and self.digest in (None, ref.digest)

    def __str__(self) -> str:
        return f"{self.repository}@{self.digest}" if self.digest else self.repository


def allow_list(default_image: str, entries: Iterable[str]) -> tuple[AllowedImage, ...]:
    """The configured entries; none: the default image's repository (and its digest when
    it has one)."""
    parsed = tuple(AllowedImage.parse(e) for e in entries)
    if parsed:
        return parsed
    ref = parse_image(default_image)
    return (AllowedImage(ref.repository, ref.digest),)


def image_problem(
    image: str | None, default_image: str, allowed: tuple[AllowedImage, ...]
) -> str | None:
    """Why `spec.gateway.image` may not run (None: it may). Unset, or the default image
    itself, is always allowed: that is the platform's own choice."""
    if image is None or image == default_image:
        return None
    names = ", ".join(str(a) for a in allowed)
    try:
        ref = parse_image(image)
    except ValueError:
        return f"spec.gateway.image is not a valid image reference; allowed images: {names}"
    if any(a.admits(ref) for a in allowed):
        return None
    return (
        f"spec.gateway.image {image} is not on the platform's list of gateway images "
        f"(allowed: {names}); remove the field to run the default gateway image"
    )
