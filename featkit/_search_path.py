"""Where featkit looks for files that live beside the package (data cards, recipes): an environment variable's
folders first, then the repository's own folder (a source checkout or an editable install).
"""

from __future__ import annotations

import os
from pathlib import Path


def search_dirs(env_var: str, repo_folder: str) -> list[Path]:
    """The ``os.pathsep``-separated folders of ``$env_var``, then ``<repo>/repo_folder``; only those that exist."""
    dirs = [Path(p) for p in os.environ.get(env_var, "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parents[1] / repo_folder)
    return [d for d in dirs if d.is_dir()]
