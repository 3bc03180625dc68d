"""The architecture the file list promises: one concern per module, imports only downwards, no
script importing another, one flag name per idea, and every flag explained by --help."""

import ast
import os
import re
import subprocess
import sys

import pytest

import bench
import evaluate
import extrapolate
import generate
import mog_toy
import negative_adapt
import train_classifier
import train_stylegan2
import unlearn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"train_stylegan2": train_stylegan2, "train_classifier": train_classifier, "negative_adapt": negative_adapt,
           "unlearn": unlearn, "extrapolate": extrapolate, "evaluate": evaluate, "generate": generate,
           "mog_toy": mog_toy, "bench": bench}
# module -> the project modules it may import (each only from below it)
MODULES = {"utils": set(), "method": set(), "mog": set(), "model": {"op"}, "classifiers": set(), "dataset": {"utils"},
           "nvlabs": {"model", "utils"}, "checkpoint": {"classifiers", "model", "nvlabs", "utils"},
           "metrics": {"checkpoint", "utils"}, "gan": {"checkpoint", "method", "utils"},
           "report": {"checkpoint", "metrics", "utils"}, "scoring": {"dataset", "metrics", "report", "utils"},
           "fewshot": {"gan", "model"}}
PROJECT = set(MODULES) | set(SCRIPTS) | {"op"}
MAX_LINES = {"model": 600, "classifiers": 400, "utils": 250, "method": 400, "dataset": 400, "nvlabs": 400, "checkpoint": 400, "metrics": 400,
             "gan": 400, "fewshot": 400, "report": 400, "scoring": 400, **{name: 400 for name in SCRIPTS}}


def imports(path):
    """(top-level imported module names, imports found inside functions or classes)."""
    tree = ast.parse(open(path).read())
    top, nested = set(), []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            names = {name.split(".")[0] for name in names}
            if node in tree.body:
                top |= names
            else:
                nested.append((node.lineno, names))
    return top, nested


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_import_only_downwards_and_stay_small(module):
    top, nested = imports(os.path.join(ROOT, f"{module}.py"))
    assert top & PROJECT <= MODULES[module], f"{module} imports {sorted(top & PROJECT - MODULES[module])}"
    if module == "method":
        assert top == {"torch"}, top
    assert not [n for n in nested if n[1] & PROJECT]
    if module in MAX_LINES:
        assert sum(1 for _ in open(os.path.join(ROOT, f"{module}.py"))) <= MAX_LINES[module]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_no_script_imports_another_and_all_imports_are_at_the_top(name):
    top, nested = imports(os.path.join(ROOT, f"{name}.py"))
    assert not top & set(SCRIPTS), f"{name} imports the script(s) {sorted(top & set(SCRIPTS))}"
    assert not nested, f"{name}: imports inside functions at lines {[line for line, _ in nested]}"
    assert sum(1 for _ in open(os.path.join(ROOT, f"{name}.py"))) <= MAX_LINES[name]


def test_tests_import_project_modules_at_the_top():
    folder = os.path.join(ROOT, "tests")
    for file in sorted(os.listdir(folder)):
        if file.endswith(".py"):
            _, nested = imports(os.path.join(folder, file))
            assert not [n for n in nested if n[1] & PROJECT], (file, nested)


def test_the_toy_loads_no_stylegan2_code():
    code = ("import sys, mog_toy; print(sorted(m for m in sys.modules if m in "
            "{'model', 'gan', 'dataset', 'torchvision', 'checkpoint', 'metrics'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_dataset_choices_live_in_the_registry():
    pattern = re.compile(r"dataset\s*(==|!=|in)\s*[(\"']")
    for file in sorted(os.listdir(ROOT)):
        if file.endswith(".py") and file != "dataset.py":
            text = open(os.path.join(ROOT, file)).read()
            assert not pattern.search(text), f"{file} branches on a dataset name"


def flags(script):
    return {option: action for action in script.create_argparser()._actions for option in action.option_strings}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_flag_is_explained(name):
    for option, action in flags(SCRIPTS[name]).items():
        if option not in ("-h", "--help") and action.help != "==SUPPRESS==":
            assert action.help and len(action.help.split()) >= 2, f"{name} {option} has no help"


def test_one_flag_name_per_idea():
    retired = {"--k", "--ewc_weight", "--el2_mu", "--el2_alpha", "--il2_mu", "--nl2_mu", "--gammas", "--methods",
               "--n_check", "--n_grid"}
    for name, script in SCRIPTS.items():
        options = flags(script)
        assert not retired & set(options), (name, retired & set(options))
        if "--n_sample" in options:  # always the size of a sample grid
            assert "grid" in options["--n_sample"].help, name
    for option in ("--n_models", "--ewc_lambda"):
        assert option in flags(negative_adapt) and option in flags(mog_toy)
    for option in ("--mu", "--alpha", "--repulsion", "--method"):
        assert option in flags(unlearn) and option in flags(mog_toy)
    assert "--gamma" in flags(extrapolate) and "--gamma" in flags(mog_toy)
    assert "--n_eval" in flags(evaluate) and "--n_fid" in flags(evaluate)


def test_method_choices_help_and_readme_come_from_the_registry():
    method_flag = flags(unlearn)["--method"]
    assert list(method_flag.choices) == list(unlearn.METHODS)
    readme = open(os.path.join(ROOT, "README.md")).read()
    rows = re.findall(r"^\| `(\w+)` \| (.+) \|$", readme, flags=re.M)
    assert rows == [(name, m.help) for name, m in unlearn.METHODS.items()]
    for name, m in unlearn.METHODS.items():
        assert f"{name}: {m.help}" in method_flag.help
