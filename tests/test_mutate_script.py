"""scripts/mutate.py (``make mutate``) names modules and tests that exist: a module moved or a
test file split must not leave the mutation run pointing at nothing (it would report no
killed mutants for that module, or fail only when someone runs it by hand)."""

import importlib.util
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_mutate_script():
    spec = importlib.util.spec_from_file_location("mutate_script", REPO_ROOT / "scripts/mutate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_modules_and_their_tests_exist():
    script = load_mutate_script()
    modules = sorted(set(script.DEFAULT_PATHS) | set(script.DEFAULT_TESTS))
    assert [path for path in modules if not (REPO_ROOT / path).exists()] == []
    tests = sorted({test for tests in script.DEFAULT_TESTS.values() for test in tests})
    assert [test for test in tests if not (REPO_ROOT / test).exists()] == []
    # Every default module has tests to run its mutants against.
    for path in script.DEFAULT_PATHS:
        assert script._tests_for(path), path
