"""Sandbox image definitions (``images/<name>/image.toml``) and their content tags; no docker needed.

An image's tag carries a digest of its definition and of the in-sandbox harness, so it changes
exactly when either does: the client and the workers compute the same tag from the same files,
and results cached under one tag are never served for another.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["ImageDefinition", "load_definition", "image_tag", "harness_files", "project_files", "HARNESS_DIR", "SERVICE"]

HARNESS_DIR = Path(__file__).parent / "harness"
SERVICE = "service"  # the image compose runs workers in; everything else under images/ is a sandbox image


@dataclass(frozen=True)
class ImageDefinition:
    name: str
    version: str
    suite: str
    variant: str
    packages: tuple[str, ...]
    digest: str
    exec_scratch: bool = False          # programs are binaries run from scratch (else scratch is noexec)
    setup: tuple[str, ...] = ()         # shell commands run in the root filesystem after debootstrap
    downloads: tuple[tuple[str, str, str], ...] = ()  # (url, sha256, directory): a pinned tarball unpacked there

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}-{self.digest[:12]}"

    @property
    def rootfs_key(self) -> str:
        material = f"{self.suite}|{self.variant}|{','.join(sorted(self.packages))}"
        if self.setup or self.downloads:
            material += "|" + "\n".join(self.setup) + "|" + repr(self.downloads)
        return hashlib.sha256(material.encode()).hexdigest()[:16]


def load_definition(images_dir: Path, language: str = "python") -> ImageDefinition:
    path = images_dir / language / "image.toml"
    raw = path.read_bytes()
    data = tomllib.loads(raw.decode())
    digest = hashlib.sha256(raw)
    for source in harness_files():
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    if language == SERVICE:
        for source in project_files(images_dir.parent):
            digest.update(str(source.relative_to(images_dir.parent)).encode() + b"\0" + source.read_bytes())
    return ImageDefinition(name=data["name"], version=str(data["version"]), suite=data["suite"],
                           variant=data.get("variant", "minbase"), packages=tuple(data["packages"]),
                           digest=digest.hexdigest(), exec_scratch=bool(data.get("exec_scratch", False)),
                           setup=tuple(data.get("setup", ())),
                           downloads=tuple((d["url"], d["sha256"], d["into"]) for d in data.get("downloads", ())))


@lru_cache(maxsize=32)
def image_tag(images_dir: Path, language: str = "python") -> str:
    return load_definition(images_dir, language).tag


def harness_files() -> list[Path]:
    return sorted(p for p in HARNESS_DIR.glob("*.py") if p.name != "__init__.py")


def project_files(root: Path) -> list[Path]:
    files = [root / "pyproject.toml", root / "README.md"]
    for folder in ("sandbox", "worker", "policies", "images"):
        files += sorted(p for p in (root / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return files
