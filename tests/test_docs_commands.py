"""Every shell and Python block of README.md and docs/*.md, checked without running it (the fast tier): each
variable a page's commands use is set on that page before its first use; ``python``, ``torchrun`` and
``tensorboard`` are not written bare (only the environment has them: ``$PY``, ``$PY -m ...``); each
``tools/<name>.py`` exists and its own argument parser takes the arguments as written; ``--config`` files exist;
``--opts`` / ``--grid`` keys and values build a config as the tool would (a sweep's settings through the sweep's
own check, which also refuses a key the config's mode ignores); outputs go under ``runs/``; each Python block
compiles and every name it imports from ``seg_ext`` exists. ``tests/test_docs.py`` runs the marked blocks."""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import re
import shlex
import sys
from pathlib import Path

import pytest

from conftest import ROOT, load_tool

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^( *)```(bash|python)\n(.*?)^\1```", re.S | re.M)  # fenced, or fenced inside a list item
BARE = ("python", "python3", "torchrun", "tensorboard", "ray")  # what only the environment has (until activated)
OUTPUT_OPTIONS = ("--output-dir", "--output", "--json")
KNOWN = {"HOME", "PWD"}  # set in every shell (and SLURM_* in a SLURM job)
ACTIVATED = "(activated)"  # a page's `source .../bin/activate`: python, torchrun, ... are the environment's


def _blocks(language: str) -> list[tuple[str, str]]:
    return [(f"{page.relative_to(ROOT)}#{i}", match.group(3)) for page in PAGES
            for i, match in enumerate(m for m in BLOCK.finditer(page.read_text()) if m.group(2) == language)]


def _without_substitutions(text: str) -> str:
    """``$( ... )`` (nested, quoted) replaced by a plain word."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$(", i):
            depth, j = 1, i + 2
            while j < len(text) and depth:
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                j += 1
            out.append("SUBSTITUTED")
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def commands(block: str) -> list[list[str]]:
    """The block's simple commands as word lists (continuations joined, comments dropped, split at ; && || |)."""
    text = _without_substitutions(block.replace("\\\n", " "))
    found: list[list[str]] = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split, lexer.commenters = True, "#"
        words: list[str] = []
        for token in lexer:
            if token in (";", "&&", "||", "|", "&"):
                found.append(words)
                words = []
            else:
                words.append(token)
        found.append(words)
    return [w for w in found if w]


def _assignments(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """Leading ``NAME=value`` words (and ``for NAME in V ...``: its first value): the names set with their values,
    and the rest of the command."""
    if words[:1] == ["for"] and len(words) > 3 and words[2] == "in":
        return {words[1]: words[3]}, []
    names = {}
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
        name, value = words[0].split("=", 1)
        names[name] = value
        words = words[1:]
    return names, words


def _page_commands() -> list[tuple[str, list[str], dict[str, str]]]:
    """Every command of every page, with the variables set on the page before it (and their values)."""
    out = []
    for page in PAGES:
        defined = {name: "" for name in KNOWN}
        for i, match in enumerate(m for m in BLOCK.finditer(page.read_text()) if m.group(2) == "bash"):
            for words in commands(match.group(3)):
                names, rest = _assignments(words)
                out.append((f"{page.relative_to(ROOT)}#{i}", words, dict(defined)))
                defined.update(names)
                if rest[:1] in (["source"], ["."]) and rest[1:2] and rest[1].endswith("bin/activate"):
                    defined[ACTIVATED] = ""
    return out


ALL = _page_commands()


def test_the_docs_have_commands_to_check():
    assert len(ALL) > 60 and len(_blocks("python")) >= 4


@pytest.mark.parametrize("where, words, defined", [pytest.param(*c, id=f"{c[0]}:{' '.join(c[1])[:60]}") for c in ALL])
def test_a_command_uses_only_what_its_page_sets(where, words, defined):
    used = {m for w in words for m in re.findall(r"\$\{?([A-Za-z_]\w*)", w) if not m.startswith("SLURM_")}
    missing = used - set(defined)
    assert not missing, f"{where}: {' '.join(words)} uses ${', $'.join(sorted(missing))}, set nowhere above it on the page"
    _, rest = _assignments(words)
    assert not rest or rest[0] not in BARE or ACTIVATED in defined, (
        f"{where}: '{rest[0]}' written bare; only the environment has it: $PY (or $PY -m ...), with PY set on the page")


def _tool(words: list[str]) -> tuple[str, list[str]] | None:
    for k, word in enumerate(words):
        match = re.fullmatch(r"(?:.*/)?tools/(\w+)\.py", word)
        if match:
            return match.group(1), words[k + 1:]
    return None


# a command that loads a plugin (SEG_EXT_PLUGINS=...) is checked for its tool only: loading the plugin here would
# register its method and format for every later test of this process
TOOL_COMMANDS = [(where, *_tool(words), defined) for where, words, defined in ALL
                 if _tool(words) and "SEG_EXT_PLUGINS" not in _assignments(words)[0]]


def _substituted(args: list[str], values: dict[str, str]) -> list[str]:
    """``$NAME`` replaced by its value on the page (``~`` expanded)."""
    def value(match: re.Match) -> str:
        text = values.get(match.group(1))
        if text == "SUBSTITUTED":  # a command's output, e.g. --resume or nothing: left out
            return ""
        return str(Path(text).expanduser()) if text else "value"

    return [w for w in (re.sub(r"\$\{?([A-Za-z_]\w*)\}?", value, a) for a in args) if w]


@pytest.mark.parametrize("where, tool, args, values", [
    pytest.param(*c, id=f"{c[0]}:{c[1]}:{' '.join(c[2])[:50]}") for c in TOOL_COMMANDS])
def test_a_tool_command_parses_and_builds_its_config(where, tool, args, values):
    from seg_ext.errors import SegExtError

    assert (ROOT / "tools" / f"{tool}.py").is_file(), f"{where}: tools/{tool}.py does not exist"
    args = _substituted(args, values)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = load_tool(tool).get_args_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}: tools/{tool}.py {' '.join(args)}: {err.getvalue().strip().splitlines()[-1]}")
    for option in OUTPUT_OPTIONS:
        value = getattr(ns, option[2:].replace("-", "_"), None)
        if value is not None and not Path(value).is_absolute() and not str(value).startswith("runs/"):
            pytest.fail(f"{where}: {option} {value} writes into the checkout outside runs/ (git-ignored); "
                        "expected runs/... (or a folder elsewhere)")
    config = getattr(ns, "config", None)
    if config is not None and str(config).startswith("runs/"):
        return  # a config an earlier command of the page writes (e.g. an old version from git)
    if config is not None:
        assert (ROOT / config).is_file(), f"{where}: --config {config} does not exist"
    try:
        _check_config(tool, ns)
    except SegExtError as exc:
        pytest.fail(f"{where}: tools/{tool}.py {' '.join(args)}: {exc}")


def _check_config(tool: str, ns) -> None:
    """The config the command would run with, built and checked as the tool builds it (no data read)."""
    from seg_ext.methods import METHODS, method_config, resolve_method
    from seg_ext.tasks.sweep import check_settings, parse_grid, plan

    config = ROOT / ns.config if getattr(ns, "config", None) is not None else None
    opts = list(getattr(ns, "opts", None) or [])
    if tool == "sweep":
        check_settings(plan(parse_grid(ns.grid), ns.seeds[:1], Path("runs/x")), config, ns.method, opts)
    elif tool in ("train_semantic", "train_instance") and not (ns.resume or ns.eval_only):
        task = "semantic" if tool == "train_semantic" else "instance"
        method_config(resolve_method(ns.method, config, task), config, opts, task)
    elif opts:  # overrides of a saved run's config: keys some method has
        keys = {f"{block}.{key}" for cls in METHODS.values() for block, values in cls.defaults().items()
                if isinstance(values, dict) for key in values}
        for item in opts:
            assert item.split("=", 1)[0] in keys, f"--opts {item}: no method has this key"


@pytest.mark.parametrize("where, code", [pytest.param(*b, id=b[0]) for b in _blocks("python")])
def test_a_python_block_compiles_and_its_seg_ext_imports_exist(where, code):
    tree = ast.parse(code, where)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("seg_ext"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), (
                    f"{where}: from {node.module} import {alias.name}: no such name")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("seg_ext"):
                    importlib.import_module(alias.name)


def test_the_checks_catch_what_they_are_for():
    """The checker itself: commands split as a shell splits them, and each kind of drift fails."""
    assert commands('PY=x; D=y\n$PY tools/predict.py --checkpoint "a b" \\\n    --input $($PY -c "print(1)")  # note') == [
        ["PY=x"], ["D=y"], ["$PY", "tools/predict.py", "--checkpoint", "a b", "--input", "SUBSTITUTED"]]
    fails = pytest.fail.Exception
    with pytest.raises(AssertionError, match=r"uses \$D"):
        test_a_command_uses_only_what_its_page_sets("page", ["$PY", "tools/x.py", "$D"], {"PY": "p"})
    with pytest.raises(AssertionError, match="written bare"):
        test_a_command_uses_only_what_its_page_sets("page", ["python", "tools/x.py"], {})
    with pytest.raises(fails, match="unrecognized arguments"):
        test_a_tool_command_parses_and_builds_its_config("page", "evaluate", ["--gt", "g", "--results", "r", "[--x]"], {})
    with pytest.raises(fails, match="outside runs/"):
        test_a_tool_command_parses_and_builds_its_config("page", "export", ["--checkpoint", "c", "--output", "m.onnx"], {})
    with pytest.raises(fails, match="unknown config key 'train.epoch'"):
        test_a_tool_command_parses_and_builds_its_config("page", "train_semantic", ["--opts", "train.epoch=3"], {})
    with pytest.raises(fails, match="the sweep varies 'augment.crop_scale'"):
        test_a_tool_command_parses_and_builds_its_config(
            "page", "sweep", ["--config", "configs/semantic/pennfudan_unet.yaml", "--grid", "augment.crop_scale=null,[0.5,1]",
                              "--output-dir", "runs/s"], {})
