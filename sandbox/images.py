"""Sandbox images, built from Debian packages with debootstrap (no container registry needed).

An image's tag carries a digest of its definition (``images/<language>/image.toml``) and of the
in-sandbox harness, so it is rebuilt exactly when either changes. The debootstrapped root
filesystem is cached by package list, so a harness change costs seconds, not a new debootstrap.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import docker
import docker.errors

from sandbox.errors import ImageMissing, InfrastructureError

__all__ = ["ImageDefinition", "load_definition", "require_image", "image_exists", "build_image", "debian_mirror", "HARNESS_DIR"]

HARNESS_DIR = Path(__file__).parent / "harness"
SERVICE = "service"  # the image compose runs workers in; everything else under images/ is a sandbox image
HARNESS_FILES = ("startup.py", "hardening.py", "protocol.py", "values.py", "replay.py", "candidate.py", "checker.py", "zygote.py",
                 "supervisor.py")
CACHE_DIR = Path("/var/cache/sandbox-exec")


@dataclass(frozen=True)
class ImageDefinition:
    name: str
    version: str
    suite: str
    variant: str
    packages: tuple[str, ...]
    digest: str

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}-{self.digest[:12]}"

    @property
    def rootfs_key(self) -> str:
        material = f"{self.suite}|{self.variant}|{','.join(sorted(self.packages))}"
        return hashlib.sha256(material.encode()).hexdigest()[:16]


def load_definition(images_dir: Path, language: str = "python") -> ImageDefinition:
    path = images_dir / language / "image.toml"
    raw = path.read_bytes()
    data = tomllib.loads(raw.decode())
    digest = hashlib.sha256(raw)
    for name in HARNESS_FILES:
        digest.update(name.encode() + b"\0" + (HARNESS_DIR / name).read_bytes())
    if language == SERVICE:
        for source in _project_files(images_dir.parent):
            digest.update(str(source.relative_to(images_dir.parent)).encode() + b"\0" + source.read_bytes())
    return ImageDefinition(name=data["name"], version=str(data["version"]), suite=data["suite"],
                           variant=data.get("variant", "minbase"), packages=tuple(data["packages"]),
                           digest=digest.hexdigest())


def require_image(client: docker.DockerClient, images_dir: Path, language: str = "python") -> str:
    """The tag of the current image; ``ImageMissing`` if it has not been built."""
    tag = load_definition(images_dir, language).tag
    if not image_exists(client, tag):
        raise ImageMissing(f"sandbox image {tag} is not built: run `sandbox images build`")
    return tag


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def build_image(client: docker.DockerClient, definition: ImageDefinition,
                say: Callable[[str], None] = print, force: bool = False) -> str:
    """Build the image if its tag is missing (or ``force``); return the tag."""
    if image_exists(client, definition.tag):
        if not force:
            say(f"image {definition.tag} is up to date")
            return definition.tag
        replaced = client.images.get(definition.tag).id  # a forced rebuild would leave it dangling
    else:
        replaced = None
    rootfs = _rootfs(definition, say)
    if definition.name.endswith(SERVICE):
        _install_project(rootfs, say)
        changes = ["ENV PATH=/opt/sandbox/venv/bin:/usr/bin:/bin LANG=C.UTF-8 "
                   "SANDBOX_POLICIES_DIR=/opt/sandbox/src/policies SANDBOX_IMAGES_DIR=/opt/sandbox/src/images",
                   "WORKDIR /opt/sandbox/src"]
    else:
        _install_harness(rootfs)
        changes = ["ENV PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8", "USER 65534:65534", "WORKDIR /tmp"]
    with tempfile.NamedTemporaryFile(suffix=".tar", dir=CACHE_DIR) as archive:
        say("packing the root filesystem")
        with tarfile.open(archive.name, "w") as tar:
            tar.add(rootfs, arcname=".")
        say(f"importing {definition.tag}")
        repository, tag = definition.tag.split(":")
        try:
            client.api.import_image(src=archive.name, repository=repository, tag=tag,
                                    changes=[*changes, f"LABEL io.sandbox-exec.image-digest={definition.digest}"])
        except docker.errors.APIError as exc:
            raise InfrastructureError(f"docker import failed: {exc}") from exc
    client.images.get(definition.tag).tag(repository, "latest")
    say(f"built {definition.tag}")
    _prune_superseded(client, repository, definition.tag, say)
    if replaced and replaced != client.images.get(definition.tag).id:
        try:
            client.images.remove(replaced)
        except docker.errors.APIError:
            pass
    return definition.tag


def _prune_superseded(client: docker.DockerClient, repository: str, current: str, say: Callable[[str], None]) -> None:
    """Remove older tags of this image (each import is a full layer); ones in use are kept."""
    for image in client.images.list(name=repository):
        if any(tag in (current, f"{repository}:latest") for tag in image.tags):
            continue
        for tag in image.tags:
            try:
                client.images.remove(tag)
                say(f"removed superseded {tag}")
            except docker.errors.APIError:  # a container still uses it; the next build tries again
                pass


def _rootfs(definition: ImageDefinition, say: Callable[[str], None]) -> Path:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    rootfs = CACHE_DIR / f"rootfs-{definition.rootfs_key}"
    if (rootfs / "usr/bin/python3").exists():
        return rootfs
    shutil.rmtree(rootfs, ignore_errors=True)
    partial = CACHE_DIR / f"partial-{definition.rootfs_key}"
    shutil.rmtree(partial, ignore_errors=True)
    mirror = debian_mirror(definition.suite)
    say(f"debootstrap {definition.suite} ({', '.join(definition.packages)}) from {mirror}: about a minute")
    command = ["debootstrap", f"--variant={definition.variant}", f"--include={','.join(definition.packages)}",
               definition.suite, str(partial), mirror]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise InfrastructureError(f"debootstrap failed ({result.returncode}): {result.stderr[-2000:]}")
    shutil.rmtree(partial / "var/cache/apt/archives", ignore_errors=True)
    (partial / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    partial.rename(rootfs)
    return rootfs


def _install_harness(rootfs: Path) -> None:
    target = rootfs / "opt/harness"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in HARNESS_FILES:
        shutil.copy2(HARNESS_DIR / name, target / name)
        (target / name).chmod(0o644)
    # Compile with the image's own Python: the root filesystem is read-only at run time.
    subprocess.run(["chroot", str(rootfs), "python3", "-m", "compileall", "-q", "/opt/harness"], check=True)


def _project_files(root: Path) -> list[Path]:
    files = [root / "pyproject.toml", root / "README.md"]
    for folder in ("sandbox", "worker", "policies", "images"):
        files += sorted(p for p in (root / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return files


def _install_project(rootfs: Path, say: Callable[[str], None]) -> None:
    """Copy the project into the image and pip-install it into a venv there (trusted service code)."""
    root = HARNESS_DIR.parent.parent
    target = rootfs / "opt/sandbox/src"
    shutil.rmtree(rootfs / "opt/sandbox", ignore_errors=True)
    for source in _project_files(root):
        destination = target / source.relative_to(root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    wheels = rootfs / "opt/sandbox/wheels"
    say("building wheels for the service image (pip on the host, with the host's own configuration)")
    # Debian's Python is 3.11.2, where redis also needs async-timeout; the host's newer Python does not.
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels), str(target),
                             "async-timeout>=4.0.3"], capture_output=True, text=True)
    if result.returncode != 0:
        raise InfrastructureError(f"pip wheel failed: {result.stderr[-2000:]}")
    for command in (["python3", "-m", "venv", "/opt/sandbox/venv"],
                    ["/opt/sandbox/venv/bin/pip", "install", "--quiet", "--no-index", "--find-links", "/opt/sandbox/wheels",
                     "sandbox-exec"]):
        result = subprocess.run(["chroot", str(rootfs), *command], capture_output=True, text=True)
        if result.returncode != 0:
            raise InfrastructureError(f"{' '.join(command)} failed in the service image: {result.stderr[-2000:]}")
    shutil.rmtree(wheels)


def debian_mirror(suite: str) -> str:
    """The Debian mirror the host's apt sources already use for ``suite`` (never hard-coded)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for block in path.read_text().split("\n\n"):
            fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line and not line.startswith("#"))
            suites = fields.get("Suites", "").split()
            if suite in suites and "deb" in fields.get("Types", "").split():
                return fields["URIs"].split()[0]
    sources_list = Path("/etc/apt/sources.list")
    if sources_list.exists():
        for line in sources_list.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == suite:
                return parts[1]
    raise InfrastructureError(f"no Debian mirror for {suite!r} in the apt sources of this machine")
