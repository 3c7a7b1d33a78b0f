"""The README's command and option references are generated from the code and current."""

from pathlib import Path

from driver import docs

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_references_are_current():
    text = README.read_text()
    assert docs.render(text) == text, "README is stale: run `make docs`"


def test_every_cli_command_and_service_option_is_documented():
    text = README.read_text()
    for line in docs.cli_reference().splitlines():
        assert line in text
    assert "`--policy-enforcement`" in text and "`CILIUM_NODE_RANGE4`" in text
