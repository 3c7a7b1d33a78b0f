"""Removing netfilter rules never loops: a delete the tool refuses is an error."""

import pytest

from datapath.errors import DatapathError
from datapath.netfilter import firewall


def stub_tool(tmp_path, deletes_work: bool):
    """An iptables stand-in: -C finds the rule until one -D worked; -D fails or works."""
    state = tmp_path / "present"
    state.write_text("1")
    tool = tmp_path / "iptables"
    delete = f"rm -f {state}; exit 0" if deletes_work else 'echo "lock not taken" >&2; exit 4'
    tool.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" -C "*) test -e {state};; *" -D "*) {delete};; *) exit 1;; esac\n'
    )
    tool.chmod(0o755)
    return str(tool)


def test_a_rule_present_once_is_deleted_once(tmp_path):
    tool = stub_tool(tmp_path, deletes_work=True)
    assert firewall.delete_every(tool, ("-t", "nat"), "POSTROUTING", ["-j", "X"]) == 1


def test_a_refused_delete_is_an_error_not_a_loop(tmp_path):
    tool = stub_tool(tmp_path, deletes_work=False)
    with pytest.raises(DatapathError, match="-t nat -D POSTROUTING: lock not taken"):
        firewall.delete_every(tool, ("-t", "nat"), "POSTROUTING", ["-j", "X"])
