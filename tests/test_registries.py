"""What is looked up by name is in the registries only: prediction, export, the run drivers and the tools name no
method or model (they ask the method or model object), and the tools take their choices from the tables."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import ROOT, load_tool
from seg_ext.methods import METHODS, TASKS
from seg_ext.models import SEMANTIC_MODELS

GENERIC = [ROOT / "seg_ext" / "inference.py", ROOT / "seg_ext" / "export.py", ROOT / "seg_ext" / "cli.py",
           *sorted((ROOT / "seg_ext" / "tasks").glob("*.py")), *sorted((ROOT / "tools").glob("*.py"))]


def _names() -> set[str]:
    models = {name for cls in METHODS.values() for name in cls.models} | set(SEMANTIC_MODELS)
    return {n for n in METHODS if n not in TASKS} | models


def _code_words(path: Path) -> list[tuple[int, str]]:
    """String constants (docstrings left out) and identifiers of a module's code, with their lines."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    words = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.append((node.lineno, node.value))
        elif isinstance(node, ast.Name):
            words.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            words.append((node.lineno, node.attr))
        elif isinstance(node, ast.alias):
            words.append((node.lineno if hasattr(node, "lineno") else 0, node.name))
    return words


def test_generic_modules_name_no_method_or_model():
    names = _names()
    pattern = re.compile(r"(?<![a-z])(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True)) + r")(?![a-z])", re.I)
    found = [f"{path.relative_to(ROOT)}:{line}: {word!r}" for path in GENERIC for line, word in _code_words(path)
             if pattern.search(word.replace("_", " ") if word not in names else word)]
    assert not found, "names looked up outside the registries:\n" + "\n".join(found)


def test_the_check_catches_a_name_switch(tmp_path):
    module = tmp_path / "switch.py"
    module.write_text('"""watershed in a docstring is fine."""\n\ndef f(method):\n    return method.name == "watershed"\n')
    assert [w for _, w in _code_words(module) if w == "watershed"] == ["watershed"]


def test_tools_take_their_choices_from_the_registries():
    for tool, task in (("train_semantic", "semantic"), ("train_instance", "instance")):
        parser = load_tool(tool).get_args_parser()
        action = next(a for a in parser._actions if a.dest == "method")
        assert list(action.choices) == [n for n, cls in METHODS.items() if cls.task == task]
    sweep = next(a for a in load_tool("sweep").get_args_parser()._actions if a.dest == "method")
    assert list(sweep.choices) == list(METHODS)
