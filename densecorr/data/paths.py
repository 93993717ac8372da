"""Where the data is: ../shared/data when present, else the small sample shipped in the package.

Nothing is downloaded. `shared_data_root()` looks for `shared/data` next to the current
directory and next to the repository (`<repo>/../shared/data`); the environment variable
DENSECORR_DATA overrides both.
"""
from __future__ import annotations

import os

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../densecorr


def shared_data_root() -> str | None:
    """The shared data folder (holding davis2016_subset/ ...), or None when absent."""
    env = os.environ.get("DENSECORR_DATA")
    if env:
        return env if os.path.isdir(env) else None
    repo = os.path.dirname(_PACKAGE)
    for base in (os.getcwd(), repo):
        path = os.path.normpath(os.path.join(base, "..", "shared", "data"))
        if os.path.isdir(path):
            return path
    return None


def sample_root() -> str:
    """The DAVIS-layout sample shipped in the package (20 frames of horsejump-high, 480p, with
    masks and BADJA joints; CC BY-NC 4.0 / MIT, see its NOTICE.md)."""
    return os.path.join(_PACKAGE, "assets", "davis_sample")


def default_davis_root() -> tuple[str, bool]:
    """(root, is_sample): ../shared/data/davis2016_subset when present, else the shipped sample."""
    shared = shared_data_root()
    if shared is not None:
        path = os.path.join(shared, "davis2016_subset")
        if os.path.isdir(path):
            return path, False
    return sample_root(), True
