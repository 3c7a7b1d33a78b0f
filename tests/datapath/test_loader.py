"""Compiling in the child process: programs come back loaded, failures come back as errors
with the compiler's words, and no file descriptor is left behind either way. A store keeps
a build for the next process, which reuses it while sources, settings and maps are the same."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from datapath import Datapath, libbpf, loader
from datapath.datapath import PROGRAM_STORE_DIR
from datapath.errors import DatapathError
from datapath.maps import DatapathMaps

from .conftest import PREFIX, SERVICE_RANGES

TC_ACT_SHOT = 2


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_failed_compile_says_why_and_leaks_nothing(datapath):
    before = open_fds()
    with pytest.raises(DatapathError) as failure:
        loader.load_programs({})  # no map fds: every map reference is undefined
    message = str(failure.value)
    assert message.startswith(f"compiling {loader.LXC_SOURCE}")
    assert "error:" in message and "MAP_FD" in message  # clang's own diagnostics
    assert open_fds() <= before


def test_loaded_programs_run_and_close(datapath):
    before = open_fds()
    programs = loader.load_programs(datapath.maps.fds())
    frame = bytes(14)  # an Ethernet header of ethertype 0, from no known endpoint
    verdict, _ = loader.run_program(programs.from_container, frame, ifindex=1)
    assert verdict == TC_ACT_SHOT
    programs.close()
    assert open_fds() <= before


def test_a_compiler_process_that_sends_nothing_is_an_error(datapath, monkeypatch, tmp_path):
    silent = tmp_path / "silent_child.py"
    silent.write_text("import sys\nsys.exit(0)\n")
    monkeypatch.setattr(loader, "COMPILE_CHILD", silent)
    before = open_fds()
    with pytest.raises(DatapathError, match="sent no programs"):
        loader.load_programs(datapath.maps.fds())
    assert open_fds() <= before


@pytest.fixture
def store_dir(pin_dir):
    path = Path(pin_dir) / "store-test"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def builds(store_dir: Path) -> list[str]:
    return sorted(p.name for p in store_dir.iterdir())


def load_prefilter(store_dir: Path, maps: DatapathMaps) -> tuple[loader.ProgramStore, int]:
    """A fresh store (as a new driver process has) and the id of the program it loaded."""
    store = loader.ProgramStore(store_dir)
    program = loader.load_xdp(maps.fds(), store)
    try:
        return store, libbpf.object_id(program.fd)
    finally:
        os.close(program.fd)


def test_a_stored_build_is_reused_by_the_next_process(datapath, store_dir):
    first, compiled = load_prefilter(store_dir, datapath.maps)
    assert (first.compile_count, first.reuse_count) == (1, 0) and first.compile_seconds > 0
    (build,) = builds(store_dir)
    # What a process killed between storing its build and unpinning the older ones left.
    (store_dir / "bpf_xdp-older").mkdir()
    (store_dir / f"{loader.STAGING}-bpf_xdp-half-1").mkdir()
    again, reused = load_prefilter(store_dir, datapath.maps)
    assert (again.compile_count, again.reuse_count) == (0, 1)
    assert reused == compiled
    assert builds(store_dir) == [build]


def test_a_build_that_cannot_be_kept_is_still_loaded(datapath, pin_dir, caplog):
    nowhere = Path(pin_dir) / "no-such-dir" / "programs"
    store, _ = load_prefilter(nowhere, datapath.maps)
    assert (store.compile_count, store.reuse_count) == (1, 0)
    assert "bpf_xdp.c is not kept for the next start" in caplog.text


def test_other_maps_make_another_build_which_replaces_the_old(datapath, pin_dir, store_dir):
    _, old = load_prefilter(store_dir, datapath.maps)
    (old_build,) = builds(store_dir)
    other_dir = Path(pin_dir) / "store-test-maps"
    other_dir.mkdir()
    other_maps = DatapathMaps.open(other_dir, datapath.map_sizes)  # same names, other ids
    try:
        store, new = load_prefilter(store_dir, other_maps)
    finally:
        other_maps.close()
        shutil.rmtree(other_dir)
    assert store.compile_count == 1 and new != old
    assert len(builds(store_dir)) == 1 and builds(store_dir) != [old_build]


def test_a_build_missing_a_program_is_compiled_again(datapath, store_dir):
    functions = (loader.FROM_OVERLAY, loader.TO_OVERLAY, loader.FROM_NETDEV)
    first = loader.ProgramStore(store_dir)
    loader.load_overlay(datapath.maps.fds(), store=first).close()
    (build,) = builds(store_dir)
    assert sorted(p.name for p in (store_dir / build).iterdir()) == sorted(functions)
    (store_dir / build / loader.TO_OVERLAY).unlink()  # as if a pin were lost
    again = loader.ProgramStore(store_dir)
    loader.load_overlay(datapath.maps.fds(), store=again).close()
    assert (again.compile_count, again.reuse_count) == (1, 0)
    assert sorted(p.name for p in (store_dir / build).iterdir()) == sorted(functions)


def test_what_is_no_build_in_the_store_is_unpinned_without_failing_the_start(datapath, store_dir):
    """Anything else pinned among the builds (a program pinned there by hand) can be no
    build of ours: pruning unpins it rather than failing the datapath's start."""
    store, _ = load_prefilter(store_dir, datapath.maps)
    (build,) = builds(store_dir)
    fd = libbpf.lib().bpf_obj_get(
        os.fsencode(store_dir / build / sorted(builds(store_dir / build))[0])
    )
    assert fd >= 0
    try:
        assert libbpf.lib().bpf_obj_pin(fd, os.fsencode(store_dir / "stray")) == 0
    finally:
        os.close(fd)
    store.prune_for_maps(datapath.maps.fds())
    assert builds(store_dir) == [build]


def map_exists(map_id: int) -> bool:
    command = ["bpftool", "map", "show", "id", str(map_id)]
    shown = subprocess.run(command, capture_output=True, check=False, timeout=30)
    return shown.returncode == 0


def test_a_build_for_recreated_maps_goes_at_the_next_start(datapath, pin_dir):
    """A node used the prefilter, then its maps were recreated. Its next start unpins the old
    prefilter build, and so frees the old maps, though it never loads the prefilter again.
    (The session's datapath is asked for so that its teardown removes what start() put
    into netfilter.)"""
    own = Path(pin_dir) / "store-test-recreated"

    def started() -> Datapath:
        node = Datapath(pin_dir=own, veth_prefix=PREFIX, service_ranges=SERVICE_RANGES)
        node.start()
        return node

    try:
        first = started()
        try:
            first.prefilter_program()
            old_map = first.maps.prefilter_map_id()
        finally:
            first.close()
        for pinned in own.iterdir():
            if pinned.name != PROGRAM_STORE_DIR:
                pinned.unlink()
        started().close()
        sources = [name.partition("-")[0] for name in builds(own / PROGRAM_STORE_DIR)]
        assert sources == [loader.LXC_SOURCE.stem]
        deadline = time.monotonic() + 5  # the kernel frees a map after its last user, later
        while map_exists(old_map) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not map_exists(old_map)
    finally:
        shutil.rmtree(own, ignore_errors=True)
