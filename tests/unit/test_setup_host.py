"""scripts/setup-host.sh, sourced function by function (sourcing runs nothing).

The suite runs after `make setup`, so the packages the script installs are present: every
program it starts by absolute path must exist on this host."""

import os
import socket
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "setup-host.sh"


def sourced(snippet, **env):
    """Run SNIPPET in bash after sourcing the script, with ENV added; return its stdout."""
    return subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}"\n{snippet}'],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    ).stdout


@pytest.mark.parametrize("variable", ["DOCKERD", "DOCKER", "SYSTEM_PYTHON"])
def test_programs_started_by_absolute_path_exist(variable):
    path = sourced(f'printf %s "${variable}"')
    assert Path(path).is_file(), f"setup-host.sh: {variable}={path} does not exist"


def test_kernel_headers_linked_to_the_newest_debian_headers(tmp_path):
    src = tmp_path / "src"
    for name in (
        "linux-headers-6.1.0-9-amd64",
        "linux-headers-6.1.0-9-common",
        "linux-headers-6.1.0-28-amd64",
        "linux-headers-6.1.0-28-common",
    ):
        (src / name).mkdir(parents=True)
    moddir = tmp_path / "modules"
    sourced(f'link_kernel_headers "{moddir}" "{src}"')
    assert (moddir / "build").resolve() == src / "linux-headers-6.1.0-28-amd64"
    assert (moddir / "source").resolve() == src / "linux-headers-6.1.0-28-common"


def test_existing_kernel_headers_are_left_alone(tmp_path):
    moddir = tmp_path / "modules"
    (moddir / "build").mkdir(parents=True)
    assert sourced(f'link_kernel_headers "{moddir}" "{tmp_path}/nowhere"') == ""
    assert not (moddir / "build").is_symlink()


# --- which Docker engine: the one already here, or docker.io where there is none -----------

ENGINE_PACKAGES = {"docker.io"}


def dpkg_status(directory, *packages):
    """A dpkg admin directory whose status file lists PACKAGES as installed."""
    directory.mkdir()
    (directory / "status").write_text(
        "".join(
            f"Package: {name}\nStatus: install ok installed\nMaintainer: x <x@example.org>\n"
            f"Architecture: amd64\nVersion: 1.0\nDescription: {name}\n\n"
            for name in packages
        )
    )
    return directory


def executable(path, text):
    path.write_text(text)
    path.chmod(0o755)
    return path


class Host:
    """Where the script looks for an engine, all of it inside tmp_path: a dpkg status, a
    docker client that answers `info` or not, a /proc with or without dockerd, a socket."""

    def __init__(self, tmp_path, packages=(), answers=False, process=False, sock=False):
        self.dir = tmp_path
        self.proc = tmp_path / "proc"
        self.proc.mkdir()
        if process:
            (self.proc / "4242").mkdir()
            (self.proc / "4242" / "comm").write_text("dockerd\n")
        (self.proc / "1").mkdir()
        (self.proc / "1" / "comm").write_text("init\n")
        self.socket = tmp_path / "docker.sock"
        self._listener = None
        if sock:
            self._listener = socket.socket(socket.AF_UNIX)
            self._listener.bind(str(self.socket))
        self.env = {
            "DPKG_ADMINDIR": str(dpkg_status(tmp_path / "dpkg", *packages)),
            "DOCKER": str(
                executable(tmp_path / "docker", f"#!/bin/sh\nexit {0 if answers else 1}\n")
            ),
            "DOCKER_SOCKET": str(self.socket),
            "PROC_DIR": str(self.proc),
        }

    def missing_packages(self):
        return set(sourced("missing_packages", **self.env).split())

    def close(self):
        if self._listener is not None:
            self._listener.close()


ENGINES = {
    "docker-ce": dict(packages=("docker-ce", "docker-ce-cli", "containerd.io")),
    "docker-ce-cli and containerd.io": dict(packages=("docker-ce-cli", "containerd.io")),
    "moby-engine": dict(packages=("moby-engine", "moby-cli")),
    "docker.io": dict(packages=("docker.io",)),
    "none installed, one answers docker info": dict(answers=True),
    "none installed, a dockerd process": dict(process=True),
    "none installed, a docker.sock": dict(sock=True),
}


@pytest.fixture
def host(tmp_path):
    made = []

    def make(**kwargs):
        made.append(Host(tmp_path, **kwargs))
        return made[-1]

    yield make
    for h in made:
        h.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_an_engine_already_here_is_used_and_none_installed(host, engine):
    missing = host(**ENGINES[engine]).missing_packages()
    assert not missing & ENGINE_PACKAGES
    # The rest of what the driver needs is still installed, compose 1.29 for the suite too.
    assert {"python3-bpfcc", "linux-headers-amd64", "busybox-static", "docker-compose"} <= missing


def test_docker_io_is_installed_only_where_there_is_no_engine_at_all(host):
    missing = host().missing_packages()
    assert missing >= ENGINE_PACKAGES


def test_packages_already_installed_are_not_installed_again(host):
    missing = host(packages=("docker.io", "docker-compose", "busybox-static")).missing_packages()
    assert not missing & (ENGINE_PACKAGES | {"busybox-static"})


def test_what_will_change_is_said_first_one_line_each(host):
    h = host()
    out = sourced('announce_changes "$MODDIR" docker.io busybox-static', MODDIR=str(h.dir), **h.env)
    lines = out.splitlines()
    assert "will install Debian packages: docker.io busybox-static" in lines[0]
    assert any("will link" in line and "build" in line for line in lines)
    assert any("will start dockerd" in line for line in lines)


def test_an_engine_that_answers_is_neither_installed_nor_started(host):
    h = host(packages=("docker-ce",), answers=True)
    (h.dir / "build").mkdir()
    out = sourced('announce_changes "$MODDIR" busybox-static', MODDIR=str(h.dir), **h.env)
    assert "dockerd" not in out
    assert "docker.io" not in out
    assert "the Docker engine already here is used, installed: docker-ce" in out


def test_docker_client_falls_back_to_the_one_on_path(tmp_path):
    stub = executable(tmp_path / "docker", "#!/bin/sh\n")
    path = f"{tmp_path}:{os.environ['PATH']}"
    out = sourced(f'docker_client "{tmp_path}/nowhere/docker"', PATH=path)
    assert out.strip() == str(stub)
    assert sourced("docker_client /bin/sh").strip() == "/bin/sh"


def test_a_dockerd_that_exits_while_waited_for_is_replaced(tmp_path):
    """A dockerd still stopping (a kill -TERM just before) has its pid file: once it exits,
    the script starts one instead of waiting out the minute for an answer."""
    up = tmp_path / "up"
    # Not our child, so that init reaps it when it exits, as it does a real dockerd.
    stopping = sourced("sleep 1 >/dev/null 2>&1 & echo $!").strip()
    (tmp_path / "docker.pid").write_text(f"{stopping}\n")
    env = {
        "DOCKER": str(executable(tmp_path / "docker", f'#!/bin/sh\ntest -e "{up}"\n')),
        "FAKE_DOCKERD": str(executable(tmp_path / "dockerd", f'#!/bin/sh\ntouch "{up}"\n')),
        "TMP": str(tmp_path),
    }
    snippet = (
        "DOCKERD=$FAKE_DOCKERD DOCKERD_PIDFILE=$TMP/docker.pid DOCKERD_LOG=$TMP/log "
        "STATE_DIR=$TMP/state DOCKERD_MARK=$TMP/state/mark; start_dockerd"
    )
    out = sourced(snippet, **env)
    assert f"dockerd (pid {stopping}) exited: starting one" in out
    assert "started dockerd" in out and up.exists()
