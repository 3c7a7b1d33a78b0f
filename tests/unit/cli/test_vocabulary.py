"""The `cilium` command spells the datapath's protocol and direction numbers and the
enforcement modes itself (it may not import the driver); each agrees with datapath/abi.py."""

from datapath import abi
from driver.cli import main


def test_protocol_names_match_the_datapath():
    shown = {number: name.lower() for number, name in main.PROTOCOL_NAMES.items()}
    assert shown == abi.PROTOCOL_NAMES


def test_direction_names_match_the_datapath():
    assert main.DIRECTIONS == abi.DIRECTIONS


def test_enforcement_modes_match_the_datapath():
    assert main.ENFORCEMENT_MODES == abi.ENFORCEMENT_MODES
