"""No unrestricted unpickling anywhere in the repository's own code.

Scanned: every ``*.py`` outside ``.venv`` and ``tests``: the package, scripts, examples, benchmarks
and the top-level CLIs. Only ``mindcv/io/torch_pickle.py`` may import ``pickle``, and only to
subclass ``pickle.Unpickler`` as ``_RestrictedUnpickler``. Nowhere may code call
``pickle.load``/``loads``, instantiate an unpickler, import ``_pickle``/``cPickle``/``cloudpickle``/
``dill``/``shelve``/``marshal``/``jsonpickle``, call ``joblib.load`` or ``pandas.read_pickle``, call
``np.load`` with ``allow_pickle`` anything but False, call ``torch.load`` without
``weights_only=True``, or load YAML with a loader that builds Python objects. The checks read the
syntax tree, so aliases such as ``import pickle as p`` / ``from pickle import loads as l`` are
caught. A token-level grep (comments and strings removed) backs them up.
"""

import ast
import io
import os
import re
import tokenize
from typing import List

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESTRICTED_MODULE = os.path.join("mindcv", "io", "torch_pickle.py")
RESTRICTED_CLASS = "_RestrictedUnpickler"
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "shelve", "marshal", "jsonpickle", "pickle5"}
UNSAFE_YAML = {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}
UNSAFE_LOADERS = {"Loader", "UnsafeLoader", "FullLoader", "CLoader", "CUnsafeLoader", "CFullLoader"}
GREP = [
    r"\bpickle\s*\.\s*loads?\s*\(",
    r"\b_?[cC]?[pP]ickle\s*\.\s*Unpickler\s*\(",
    r"\bpickle\s*\.\s*_Unpickler\b",
    r"\b(cPickle|_pickle|cloudpickle|dill|shelve|marshal|jsonpickle)\b",
    r"\bjoblib\s*\.\s*load\s*\(",
    r"\bread_pickle\s*\(",
    r"allow_pickle\s*=\s*(True|1)\b",
    r"\byaml\s*\.\s*(unsafe_load|full_load)",
    r"\b(UnsafeLoader|FullLoader)\b",
]


def repository_sources() -> List[str]:
    paths = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".")
            and d not in ("tests", "__pycache__", "build", "dist", "venv")
            and not d.endswith(".egg-info")
        )
        paths += [os.path.join(root, f) for f in sorted(files) if f.endswith(".py")]
    return paths


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _is_false(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value in (False, 0, None)


def _is_true(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_uses(source: str, relpath: str) -> List[str]:
    """What in ``source`` could unpickle (or build arbitrary objects) without the restricted unpickler."""
    problems = []
    restricted = relpath == RESTRICTED_MODULE
    tree = ast.parse(source)
    aliases = {}  # local name -> module or module.attr it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                top = a.name.split(".")[0]
                if top in PICKLE_MODULES and not (restricted and a.name == "pickle"):
                    problems.append(f"line {node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            top = node.module.split(".")[0]
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                if top in PICKLE_MODULES:
                    problems.append(f"line {node.lineno}: from {node.module} import {a.name}")
                if (top, a.name) in (("joblib", "load"), ("pandas", "read_pickle")) or (
                    top == "yaml" and (a.name in UNSAFE_YAML or a.name in UNSAFE_LOADERS)
                ):
                    problems.append(f"line {node.lineno}: from {node.module} import {a.name}")

    def resolve(node: ast.AST) -> str:
        name = _dotted(node)
        head, _, rest = name.partition(".")
        if head in aliases:
            name = aliases[head] + ("." + rest if rest else "")
        return name

    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                if resolve(base).split(".")[-1] in ("Unpickler", "_Unpickler"):
                    if not (restricted and node.name == RESTRICTED_CLASS and resolve(base) == "pickle.Unpickler"):
                        problems.append(f"line {node.lineno}: class {node.name} subclasses {resolve(base)}")
        if not isinstance(node, ast.Call):
            continue
        func = resolve(node.func)
        kwargs = {k.arg: k.value for k in node.keywords if k.arg}
        parts = func.split(".")
        if parts[0] in PICKLE_MODULES and parts[-1] in ("load", "loads", "Unpickler", "_Unpickler", "open"):
            problems.append(f"line {node.lineno}: {func}(...)")
        if func in ("joblib.load", "pandas.read_pickle") or parts[-1] == "read_pickle":
            problems.append(f"line {node.lineno}: {func}(...)")
        if func in ("numpy.load", "np.load") or (parts[-1] == "load" and parts[0] in ("np", "numpy")):
            if "allow_pickle" in kwargs and not _is_false(kwargs["allow_pickle"]):
                problems.append(f"line {node.lineno}: {func}(..., allow_pickle=...)")
        if parts[0] == "torch" and parts[-1] == "load":
            if not ("weights_only" in kwargs and _is_true(kwargs["weights_only"])):
                problems.append(f"line {node.lineno}: {func}(...) without weights_only=True")
        if parts[0] == "yaml" and parts[-1] in UNSAFE_YAML:
            problems.append(f"line {node.lineno}: {func}(...)")
        if parts[0] == "yaml" and parts[-1] in ("load", "load_all"):
            loader = kwargs.get("Loader", node.args[1] if len(node.args) > 1 else None)
            name = resolve(loader).split(".")[-1] if loader is not None else ""
            if not (name.endswith("SafeLoader") or name.endswith("BaseLoader")):
                problems.append(f"line {node.lineno}: {func}(...) with Loader={name or 'default'}")
    return problems


def grep_hits(source: str, relpath: str) -> List[str]:
    """The GREP patterns over the code tokens (comments and string literals removed)."""
    tokens = [
        t.string
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type not in (tokenize.COMMENT, tokenize.STRING)
    ]
    code = " ".join(tokens)
    return [p for p in GREP if re.search(p, code)]


def test_the_scan_covers_the_package_scripts_and_clis():
    rel = {os.path.relpath(p, REPO) for p in repository_sources()}
    for expected in ("train.py", "validate.py", "infer.py", "export.py", "search.py", "config.py", RESTRICTED_MODULE):
        assert expected in rel
    for folder in ("mindcv", "scripts", "examples", "benchmarks"):
        assert any(p.startswith(folder + os.sep) for p in rel), folder
    assert not any(p.startswith(("tests" + os.sep, ".venv")) for p in rel)


@pytest.mark.slow
def test_no_unrestricted_unpickling_in_the_repository():
    problems = []
    for path in repository_sources():
        rel = os.path.relpath(path, REPO)
        with open(path, encoding="utf-8") as f:
            source = f.read()
        problems += [f"{rel}: {p}" for p in unsafe_uses(source, rel)]
        problems += [f"{rel}: matches {p!r}" for p in grep_hits(source, rel)]
    assert not problems, "unsafe deserialisation (use mindcv.io.torch_pickle):\n" + "\n".join(problems)


def test_the_restricted_module_unpickles_only_through_its_one_class():
    with open(os.path.join(REPO, RESTRICTED_MODULE), encoding="utf-8") as f:
        source = f.read()
    tree = ast.parse(source)
    unpicklers = [
        n.name
        for n in ast.walk(tree)
        if isinstance(n, ast.ClassDef) and any("Unpickler" in _dotted(b) for b in n.bases)
    ]
    assert unpicklers == [RESTRICTED_CLASS]
    constructed = {
        _dotted(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call) and "Unpickler" in _dotted(n.func)
    }
    assert constructed == {RESTRICTED_CLASS}


@pytest.mark.parametrize(
    "source",
    [
        "import pickle\npickle.load(f)",
        "import pickle as p\np.loads(b)",
        "from pickle import loads as l\nl(b)",
        "from pickle import Unpickler",
        "import pickle\nclass U(pickle.Unpickler):\n    pass",
        "import pickle\npickle.Unpickler(f).load()",
        "import _pickle",
        "import dill",
        "import shelve\nshelve.open('x')",
        "import marshal",
        "import joblib\njoblib.load('m.pkl')",
        "from joblib import load",
        "import pandas as pd\npd.read_pickle('x')",
        "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
        "import numpy\nnumpy.load('a.npy', allow_pickle=flag)",
        "import torch\ntorch.load('w.pth')",
        "import torch\ntorch.load('w.pth', weights_only=False)",
        "import yaml\nyaml.load(text)",
        "import yaml\nyaml.load(text, Loader=yaml.Loader)",
        "import yaml\nyaml.load(text, yaml.FullLoader)",
        "import yaml\nyaml.unsafe_load(text)",
        "from yaml import UnsafeLoader",
    ],
)
def test_the_scan_catches(source):
    assert unsafe_uses(source, "mindcv/x.py") or grep_hits(source, "mindcv/x.py"), source


@pytest.mark.parametrize(
    "source, relpath",
    [
        ("import numpy as np\nnp.load('ref.npz')", "scripts/x.py"),
        ("import numpy as np\nnp.load('ref.npz', allow_pickle=False)", "scripts/x.py"),
        ("import torch\ntorch.load('w.pth', weights_only=True)", "scripts/x.py"),
        ("import yaml\nyaml.load(text, Loader=UniqueKeySafeLoader)", "config.py"),
        ("import yaml\nyaml.safe_load(text)", "config.py"),
        ("'''never call pickle.load(f) here'''\n# nor pickle.loads(b)", "mindcv/x.py"),
        ("import pickle\nclass _RestrictedUnpickler(pickle.Unpickler):\n    pass", RESTRICTED_MODULE),
    ],
)
def test_the_scan_allows(source, relpath):
    assert not unsafe_uses(source, relpath) and not grep_hits(source, relpath), source
