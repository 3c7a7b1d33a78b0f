"""The layers only import downwards: server -> control -> datapath, and the `cilium` command
line reaches the driver through its API client alone (docs/architecture.md)."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# What each layer may import of the project's own packages (a module is in the first layer
# whose prefix it starts with). driver.config takes the default API socket from the client
# and the enforcement modes from the datapath's vocabulary, each defined once. driver.docs
# regenerates README's references from the CLI and the server, so it stands above both.
ALLOWED = {
    "driver.cli": ("driver.cli",),
    "driver.server": (
        "driver.server",
        "driver.control",
        "driver.errors",
        "driver.config",
        "driver.failpoints",
    ),
    "driver.control": (
        "driver.control",
        "datapath",
        "driver.errors",
        "driver.config",
        "driver.failpoints",
    ),
    "driver": (),
    "driver.errors": (),
    "driver.config": ("driver.cli.client", "datapath.abi"),
    "driver.failpoints": (),
    "driver.docs": ("driver",),
    "datapath": ("datapath",),
}
OWN_PACKAGES = ("driver", "datapath")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    return max((p for p in ALLOWED if module == p or module.startswith(p + ".")), key=len)


def imported_modules(path: Path, module: str) -> set[str]:
    """Absolute names of the project's modules that the file imports."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            submodules = {f"{target}.{a.name}" for a in node.names}
            found.update(submodules & PROJECT_MODULES or {target})
    return {name for name in found if name.split(".")[0] in OWN_PACKAGES}


SOURCES = sorted(p for package in OWN_PACKAGES for p in (REPO / package).rglob("*.py"))
PROJECT_MODULES = {module_name(p) for p in SOURCES}


def upward_imports(path: Path, module: str) -> list[str]:
    layer = layer_of(module)
    return sorted(
        name
        for name in imported_modules(path, module)
        if name in PROJECT_MODULES
        and not any(name == a or name.startswith(a + ".") for a in (layer, *ALLOWED[layer]))
    )


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_go_downwards(path):
    upward = upward_imports(path, module_name(path))
    assert upward == []


@pytest.mark.parametrize(
    ("module", "source", "upward"),
    [
        ("datapath.probe", "from driver.control import plane\n", ["driver.control.plane"]),
        ("driver.control.probe", "from ..server.app import create_app\n", ["driver.server.app"]),
        ("driver.cli.probe", "import driver.config\n", ["driver.config"]),
        ("driver.server.probe", "from datapath import Datapath\n", ["datapath"]),
        ("driver.server.probe", "from ..control import plane\n", []),
    ],
)
def test_the_rule_sees_relative_and_absolute_imports(tmp_path, module, source, upward):
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert upward_imports(path, module) == upward
