"""scripts/mutate.py (``make mutate``) names modules and tests that exist: a module moved or a
test file split must not leave the mutation run pointing at nothing (it would report no
killed mutants for that module, or fail only when someone runs it by hand)."""

from pathlib import Path

from tests.tool_runs import load_script

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_mutate_script():
    """``scripts/mutate.py`` as a module."""
    return load_script("scripts/mutate.py")


def test_default_modules_and_their_tests_exist():
    script = load_mutate_script()
    modules = sorted(set(script.DEFAULT_PATHS) | set(script.DEFAULT_TESTS))
    assert [path for path in modules if not (REPO_ROOT / path).exists()] == []
    tests = sorted({test for tests in script.DEFAULT_TESTS.values() for test in tests})
    assert [test for test in tests if not (REPO_ROOT / test).exists()] == []
    # Every default module has tests to run its mutants against.
    for path in script.DEFAULT_PATHS:
        assert script._tests_for(path), path
