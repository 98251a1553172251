"""The package's layers: a module imports only from its own subpackage or from a lower layer.

Every import counts, also one inside a function (a late import hides a cycle, it does not remove it). The
check is static (``ast``): importing a submodule runs ``mindcv/__init__.py``, which imports everything, so an
import in a fresh interpreter would prove nothing. ``mindcv/__init__.py`` itself is exempt.
"""

import ast
import os
from typing import Dict, List, Optional, Tuple

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "mindcv"

# subpackage or top-level module -> layer; a new one must be added here (test_every_module_has_a_layer)
LAYERS: Dict[str, int] = {
    "mindcv.errors": 0,
    "mindcv.version": 0,
    "mindcv.io": 1,
    "mindcv.utils": 2,
    "mindcv.kernels": 3,
    "mindcv.data": 4,
    "mindcv.models": 5,
    "mindcv.loss": 6,
    "mindcv.optim": 6,
    "mindcv.scheduler": 6,
    "mindcv.engine": 7,
    "mindcv.runtime": 7,
    "mindcv.deploy": 8,
    "mindcv.inference": 9,
    "mindcv.nas": 10,
    "mindcv.tools": 10,
}
EXEMPT = {PACKAGE}  # mindcv/__init__.py imports every subpackage to build the flat public API


def unit_of(module: str) -> Optional[str]:
    """The layered unit (``mindcv.<name>``) a dotted module belongs to; None for the package root or outside it."""
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) < 2:
        return None
    return ".".join(parts[:2])


def imported_modules(module: str, is_package: bool, source: str) -> List[Tuple[int, str]]:
    """Every ``mindcv`` module imported anywhere in ``source`` (functions included), relative imports resolved.

    Args:
        module: the dotted name of the module the source belongs to.
        is_package: whether it is a package's ``__init__.py`` (relative imports start at the package itself).
        source: its code.

    Returns:
        ``(line, dotted module)`` for each import of this package (``from mindcv import data`` names
        ``mindcv.data``).
    """
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base == PACKAGE:  # 'from mindcv import data' / 'from .. import errors' import subpackages
                found += [(node.lineno, f"{PACKAGE}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
    return [(line, name) for line, name in found if name == PACKAGE or name.startswith(PACKAGE + ".")]


def layering_violations(path: str, module: str, is_package: bool, source: str) -> List[str]:
    """Imports of ``source`` that reach a higher layer, a same-layer sibling, or a module outside the table.

    Args:
        path: the file, for the messages.
        module: its dotted module name.
        is_package: whether it is an ``__init__.py``.
        source: its code.

    Returns:
        One message per offending import: ``path:line: <unit> (layer n) imports <module> (layer m)``.
    """
    if module in EXEMPT:
        return []
    unit = unit_of(module)
    if unit not in LAYERS:
        return [f"{path}: {module} belongs to no layer: add {unit} to LAYERS in tests/test_layering.py"]
    problems = []
    for line, name in imported_modules(module, is_package, source):
        target = unit_of(name)
        if target == unit:
            continue
        if target not in LAYERS:
            problems.append(f"{path}:{line}: {unit} imports {name}, which belongs to no layer")
        elif LAYERS[target] >= LAYERS[unit]:
            problems.append(
                f"{path}:{line}: {unit} (layer {LAYERS[unit]}) imports {name} (layer {LAYERS[target]}); "
                "only its own subpackage and lower layers are allowed"
            )
    return problems


def package_modules() -> List[Tuple[str, str, bool]]:
    """``(path relative to the repository, dotted module, is_package)`` of every .py file under mindcv/."""
    found = []
    for root, dirs, files in os.walk(os.path.join(REPO, PACKAGE)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(root, name), REPO)
            parts = rel[: -len(".py")].split(os.sep)
            is_package = parts[-1] == "__init__"
            found.append((rel, ".".join(parts[:-1] if is_package else parts), is_package))
    return found


def _read(rel: str) -> str:
    with open(os.path.join(REPO, rel), encoding="utf-8") as f:
        return f.read()


def test_no_module_imports_a_higher_layer():
    problems = []
    for rel, module, is_package in package_modules():
        problems += layering_violations(rel, module, is_package, _read(rel))
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_every_module_has_a_layer():
    units = {unit_of(module) for _, module, _ in package_modules() if module not in EXEMPT}
    assert units - set(LAYERS) == set(), "subpackages missing from LAYERS in tests/test_layering.py"
    assert set(LAYERS) - units == set(), "LAYERS names modules that no longer exist"


# ------------------------------------------------------------------------------------------ the checker itself
@pytest.mark.parametrize(
    "path, source, line, offending",
    [
        # a late import inside a function is still an import
        ("mindcv/utils/late.py", "def f():\n    from ..models.checkpoint import read_checkpoint\n", 2, "mindcv.models"),
        ("mindcv/io/absolute.py", "import mindcv.utils.cpu_isa\n", 1, "mindcv.utils.cpu_isa"),
        ("mindcv/kernels/root.py", "from mindcv import deploy\n", 1, "mindcv.deploy"),
        ("mindcv/kernels/__init__.py", "from .. import inference\n", 1, "mindcv.inference"),
        (
            "mindcv/data/deep.py",
            "try:\n    from ..nas.runner import x\nexcept ImportError:\n    pass\n",
            2,
            "mindcv.nas",
        ),
        ("mindcv/loss/sibling.py", "from ..optim import create_optimizer\n", 1, "mindcv.optim"),  # same layer
        ("mindcv/runtime.py", "import os\nfrom .engine import evaluate\n", 2, "mindcv.engine"),  # same layer
        ("mindcv/models/unknown.py", "from ..plugins import thing\n", 1, "mindcv.plugins"),  # not in the table
    ],
)
def test_the_checker_reports_an_upward_import(path, source, line, offending):
    module = path[: -len(".py")].replace("/", ".").replace(".__init__", "")
    problems = layering_violations(path, module, path.endswith("__init__.py"), source)
    assert len(problems) == 1 and problems[0].startswith(f"{path}:{line}: ") and offending in problems[0], problems


@pytest.mark.parametrize(
    "path, source",
    [
        ("mindcv/utils/ok.py", "from ..errors import MindcvError\nfrom ..io.atomic import atomic_write\n"),
        ("mindcv/utils/sibling.py", "from . import cpu_isa\nfrom .cli import run_cli\n"),
        ("mindcv/models/__init__.py", "from . import arch\nfrom .checkpoint import read_checkpoint\n"),
        ("mindcv/inference.py", "from .deploy.onnxruntime_backend import BACKENDS\nimport numpy as np\n"),
        ("mindcv/__init__.py", "from . import nas\n"),  # the package root is exempt
    ],
)
def test_the_checker_accepts_own_package_and_lower_layers(path, source):
    module = path[: -len(".py")].replace("/", ".").replace(".__init__", "")
    assert layering_violations(path, module, path.endswith("__init__.py"), source) == []


def test_a_module_outside_the_table_is_reported():
    problems = layering_violations("mindcv/plugins/x.py", "mindcv.plugins.x", False, "import os\n")
    assert len(problems) == 1 and "belongs to no layer" in problems[0]
