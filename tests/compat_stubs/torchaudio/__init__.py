import os  # noqa: E401
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _stubs  # noqa: E402

_stubs.install(__name__, ("transforms", "functional", "io"))
