"""Where featkit looks for files that ship inside the package: data cards and fine-tuning recipes.

An environment variable's folders come first (a user's own cards or recipes, which shadow shipped ones of the
same name), then the folder inside the installed package (a wheel, an editable install or a source checkout).
"""

from __future__ import annotations

import os
from pathlib import Path


def search_dirs(env_var: str, package_folder: str) -> list[Path]:
    """The ``os.pathsep``-separated folders of ``$env_var``, then ``featkit/<package_folder>``; those that exist."""
    dirs = [Path(p) for p in os.environ.get(env_var, "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parent / package_folder)
    return [d for d in dirs if d.is_dir()]
