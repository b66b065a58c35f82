"""Sandbox images, built from Debian packages with debootstrap (no container registry needed).

An image's tag carries a digest of its definition (``images/<language>/image.toml``) and of the
in-sandbox harness, so it is rebuilt exactly when either changes. The debootstrapped root
filesystem is cached by package list, so a harness change costs seconds, not a new debootstrap.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import docker
import docker.errors

from sandbox.container import EXEC_SCRATCH_LABEL
from sandbox.errors import ImageMissing, InfrastructureError
from sandbox.imagedef import HARNESS_DIR, SERVICE, ImageDefinition, harness_files, load_definition, project_files

__all__ = ["require_image", "image_exists", "build_image", "debian_mirror"]

CACHE_DIR = Path("/var/cache/sandbox-exec")
MAX_SLOTS = 16  # samples one sandbox may run at once


def require_image(client: docker.DockerClient, images_dir: Path, image: str = "python", language: str = "") -> str:
    """The tag of the current image; ``ImageMissing`` (saying how to build it) if it has not been built."""
    tag = load_definition(images_dir, image).tag
    if not image_exists(client, tag):
        option = f" --language {language}" if language and language != "python" else ""
        raise ImageMissing(f"sandbox image {tag} is not built: run `sandbox images build{option}`")
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
                                    changes=[*changes, f"LABEL io.sandbox-exec.image-digest={definition.digest}",
                                             f"LABEL {EXEC_SCRATCH_LABEL}={int(definition.exec_scratch)}"])
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
    for url, sha256, into in definition.downloads:  # offline copies, fetched once at build time and pinned
        _unpack_download(url, sha256, partial / into.lstrip("/"), say)
    if definition.setup:  # e.g. Debian packages debootstrap cannot resolve, prebuilt crates: cached with the rootfs
        resolv = partial / "etc/resolv.conf"
        shutil.copy2("/etc/resolv.conf", resolv)  # apt inside the chroot reaches the same mirror as the host
        with proc_mounted(partial):  # rustc finds itself through /proc
            for step in definition.setup:
                say(f"setup: {step.splitlines()[0][:100]}")
                done = subprocess.run(["chroot", str(partial), "/bin/sh", "-ec", step], capture_output=True, text=True,
                                      env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
                                           "LANG": "C.UTF-8", "HOME": "/root"})
                if done.returncode != 0:
                    raise InfrastructureError(f"image setup failed ({done.returncode}): {step.splitlines()[0][:200]}: "
                                              f"{(done.stderr or done.stdout)[-2000:]}")
        resolv.unlink()
    shutil.rmtree(partial / "var/cache/apt/archives", ignore_errors=True)
    (partial / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    partial.rename(rootfs)
    return rootfs


@contextmanager
def proc_mounted(root: Path) -> Iterator[None]:
    """/proc mounted inside a root filesystem for commands chrooted there (toolchains that find themselves
    through /proc/self), unmounted after."""
    proc = root / "proc"
    subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(proc)], check=False)


def _unpack_download(url: str, sha256: str, target: Path, say: Callable[[str], None]) -> None:
    """A tarball from a package registry, checked against its pinned digest, unpacked (its first path
    component dropped, as npm's `package/`) into ``target``; regular files and directories only."""
    import hashlib
    import io
    import urllib.request

    say(f"download {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read(64 << 20)
    except OSError as exc:
        raise InfrastructureError(f"cannot download {url}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        raise InfrastructureError(f"{url} does not match its pinned sha256 {sha256}")
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
        for member in archive.getmembers():
            parts = Path(member.name).parts[1:]
            if not parts or ".." in parts or not (member.isfile() or member.isdir()):
                continue
            destination = target.joinpath(*parts)
            if member.isdir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None
            destination.write_bytes(source.read())
            destination.chmod(0o644)


def _install_harness(rootfs: Path) -> None:
    _strip_setid_bits(rootfs)
    for slot in range(MAX_SLOTS):  # mount points of the per-slot scratch tmpfs (the root is read-only)
        (rootfs / "scratch" / str(slot)).mkdir(parents=True, exist_ok=True)
    target = rootfs / "opt/harness"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for source in harness_files():
        shutil.copy2(source, target / source.name)
        (target / source.name).chmod(0o644)
    # Compile with the image's own Python: the root filesystem is read-only at run time.
    subprocess.run(["chroot", str(rootfs), "python3", "-m", "compileall", "-q", "/opt/harness"], check=True)


def _strip_setid_bits(rootfs: Path) -> None:
    """No setuid or setgid file may exist in a sandbox image (a program must not gain a uid by exec)."""
    for path in rootfs.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        mode = path.stat().st_mode
        if mode & 0o6000:
            path.chmod(mode & ~0o6000 & 0o7777)


def _install_project(rootfs: Path, say: Callable[[str], None]) -> None:
    """Copy the project into the image and pip-install it into a venv there (trusted service code)."""
    root = HARNESS_DIR.parent.parent
    target = rootfs / "opt/sandbox/src"
    shutil.rmtree(rootfs / "opt/sandbox", ignore_errors=True)
    for source in project_files(root):
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
