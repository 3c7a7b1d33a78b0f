"""scripts/setup-host.sh, sourced function by function (sourcing runs nothing).

The suite runs after `make setup`, so the packages the script installs are present: every
program it starts by absolute path must exist on this host."""

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "setup-host.sh"


def sourced(snippet):
    """Run SNIPPET in bash after sourcing the script; return its stdout."""
    return subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}"\n{snippet}'],
        check=True,
        capture_output=True,
        text=True,
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
