"""Compiling in the child process: programs come back loaded, failures come back as errors
with the compiler's words, and no file descriptor is left behind either way."""

import os

import pytest

from datapath import loader
from datapath.errors import DatapathError

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
