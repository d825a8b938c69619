"""``models:/`` URIs to local checkpoints, and the champion moved back with a serving rollback.

``resolve("models:/tessera-encoder@champion")`` downloads that version's checkpoint and says which
version it is; ``move_champion(name, version)`` moves the ``champion`` alias back to the release of
that version (the whole release, through ``lifecycle.promotion.rollback``), which a serving
rollback does together with TorchServe's default version.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tessera.errors import TesseraError


class ReleaseError(TesseraError):
    """A ``models:/`` URI that is malformed, names no bundle, or an alias no version holds."""


URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class Ref:
    """A registered model version and its checkpoint on local disk (which carries the data version)."""

    name: str
    version: str
    path: Path
    release: str | None = None


def parse(uri: str) -> tuple[str, str]:
    """``models:/NAME@alias`` or ``models:/NAME/VERSION`` -> (name, alias or version)."""
    m = URI.match(uri)
    if not m:
        raise ReleaseError(f"{uri!r} is not a model URI: use models:/NAME@alias or models:/NAME/VERSION")
    return m["name"], m["alias"] or m["version"]


def _kind(name: str) -> str:
    from lifecycle import registry

    for kind, bundle in registry.BUNDLES.items():
        if bundle == name:
            return kind
    raise ReleaseError(f"unknown bundle {name!r}; registered bundles: {sorted(registry.BUNDLES.values())}")


def resolve(uri: str, dst: str | Path | None = None) -> Ref:
    """Download the checkpoint of ``uri`` into ``dst`` (a temporary folder by default)."""
    from lifecycle import registry, tracking

    name, ref = parse(uri)
    kind = _kind(name)
    client = tracking.client()
    mv = (
        client.get_model_version(name, ref) if ref.isdigit() else registry.version_by_alias(client, kind, ref)
    )
    if mv is None:
        raise ReleaseError(f"{name} has no version with alias {ref!r}: promote a release first")
    dst = Path(dst or tempfile.mkdtemp(prefix="tessera-serve-"))
    path = registry.download_checkpoint(client, kind, str(mv.version), dst)
    return Ref(name, str(mv.version), path, mv.tags.get("release") or mv.run_id)


def move_champion(name: str, version: str, reason: str = "serving rollback") -> dict[str, str]:
    """Make the release of ``name`` v``version`` the champion again (every bundle of it)."""
    from lifecycle import promotion, registry, tracking

    client = tracking.client()
    mv = client.get_model_version(name, version)
    release = mv.tags.get("release") or mv.run_id
    current = registry.release_of(client, registry.CHAMPION)
    if current == release:
        return {"release": release}
    moved = promotion.rollback(to_release=release, reason=reason)
    return {"release": release, **moved}


def champion_version(name: str) -> str | None:
    """The version of ``name`` holding ``champion`` now (None if none)."""
    from lifecycle import registry, tracking

    mv = registry.version_by_alias(tracking.client(), _kind(name), registry.CHAMPION)
    return None if mv is None else str(mv.version)


def sibling(ref: Ref, kind: str) -> str | None:
    """``models:/<bundle>/<version>`` of bundle ``kind`` registered in the same release as ``ref``."""
    from lifecycle import registry, tracking

    if not ref.release:
        return None
    found = registry.release_versions(tracking.client(), ref.release)
    mv = found.get(kind)
    return None if mv is None else f"models:/{registry.BUNDLES[kind]}/{mv.version}"
