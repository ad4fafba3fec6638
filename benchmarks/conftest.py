"""Collect ``bench_<op>.py`` modules, so that ``pytest benchmarks/ --benchmark-only`` finds them.

(pytest's default ``python_files`` only matches ``test_*.py``.) Modules that the
configured patterns already match, or that are named on the command line,
are left to pytest's own collector.
"""
import fnmatch

import pytest


def pytest_collect_file(file_path, parent):
    if not (file_path.name.startswith("bench_") and file_path.suffix == ".py"):
        return None
    if parent.session.isinitpath(file_path):
        return None
    if any(fnmatch.fnmatch(file_path.name, pat) for pat in parent.config.getini("python_files")):
        return None
    return pytest.Module.from_parent(parent, path=file_path)
