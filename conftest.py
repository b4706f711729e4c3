"""pytest set-up for the whole repository: the notebooks under notebooks/ run through nbval with
the course's additions (smoke mode, exercise solutions, the 60 s budget, the table of slow
notebooks): see tests/notebook_plugin.py. The unit tests' own plumbing is tests/conftest.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))

pytest_plugins = ["notebook_plugin"]
