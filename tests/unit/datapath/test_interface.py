"""The real datapath and the unit tests' fake both have the face the control plane uses
(datapath.interface.DatapathApi), and the control plane uses nothing else of them."""

import inspect
import re
from pathlib import Path

import pytest

from datapath import Datapath
from datapath.interface import DatapathApi

from ..fakes import FakeDatapath

DRIVER = Path(__file__).parents[3] / "driver"
METHODS = sorted(
    name
    for name, value in vars(DatapathApi).items()
    if inspect.isfunction(value) and name[0] != "_"
)
ATTRIBUTES = sorted(DatapathApi.__annotations__)


def _shape(function) -> list[tuple[str, inspect._ParameterKind, bool]]:
    """Each parameter but self: name, kind, and whether it has a default."""
    parameters = list(inspect.signature(function).parameters.values())[1:]
    return [(p.name, p.kind, p.default is not inspect.Parameter.empty) for p in parameters]


@pytest.mark.parametrize("implementation", [Datapath, FakeDatapath])
@pytest.mark.parametrize("method", METHODS)
def test_implementation_has_the_method_with_its_parameters(implementation, method):
    found = getattr(implementation, method, None)
    assert callable(found), f"{implementation.__name__} has no {method}()"
    assert _shape(found) == _shape(getattr(DatapathApi, method))


@pytest.mark.parametrize("implementation", [Datapath, FakeDatapath])
def test_implementation_has_the_attributes(implementation):
    instance = implementation()  # neither touches the kernel before start()
    for name in ATTRIBUTES:
        assert hasattr(instance, name), f"{implementation.__name__} has no {name}"


def test_the_driver_uses_exactly_the_interface():
    used = set()
    for path in DRIVER.rglob("*.py"):
        for line in path.read_text().splitlines():
            if not line.lstrip().startswith(("from ", "import ")):
                used.update(re.findall(r"\bdatapath\.([a-z_]+)\b", line))
    assert used == set(METHODS) | set(ATTRIBUTES)
