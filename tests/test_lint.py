"""Static checks: ruff (configured in pyproject.toml) over the pack, tools and tests."""
import shutil
import subprocess
import sys

import pytest
from conftest import REPO


def test_ruff_clean():
    ruff = shutil.which("ruff") or shutil.which("ruff", path=sys.prefix + "/bin")
    if ruff is None:
        pytest.skip("ruff is not installed (tests/requirements.txt installs it)")
    r = subprocess.run([ruff, "check", "--output-format", "concise", REPO], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
