"""The running driver holds no compiler: bcc compiles in a child process that exits, and the
driver reaches maps, the event ring and programs through libbpf alone."""

import os

from .test_metrics import scrape, value

COMPILER_LIBRARIES = ("libLLVM", "libclang", "libbcc")


def driver_pids(driver) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) == driver.proc.pid:
                pids.append(int(pid))
        except ProcessLookupError:
            continue
    return pids


def mapped_files(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as f:
        return {line.split()[-1] for line in f if "/" in line}


def test_no_driver_process_maps_the_compiler(driver, net, docker):
    a = docker.container(net)  # an endpoint made: maps written, programs attached
    b = docker.container(net)
    docker.exec(a, "ping6", "-c1", "-W2", docker.addresses(b, net)[0])
    found = scrape(driver.settings["api_socket"])
    compiled = value(found, "pycilium_bpf_compile_duration_seconds_count")
    assert compiled + value(found, "pycilium_bpf_reused_builds_total") >= 1
    pids = driver_pids(driver)
    assert len(pids) >= 2, "expected the gunicorn master and its worker"
    compiler = {}
    for pid in pids:
        names = {path.rsplit("/", 1)[-1] for path in mapped_files(pid)}
        compiler[pid] = sorted(name for name in names if name.startswith(COMPILER_LIBRARIES))
    assert compiler == {pid: [] for pid in pids}
    for pid in pids:
        with open(f"/proc/{pid}/cmdline") as f:
            assert "compile_child" not in f.read(), "the compiler process lingers"
