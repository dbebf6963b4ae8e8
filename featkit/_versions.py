"""The library versions a result depends on, recorded in store manifests, run directories and benchmark runs."""

from __future__ import annotations

import platform


def library_versions() -> dict[str, str]:
    import numpy
    import PIL
    import torch
    import torchvision

    import featkit

    return {"featkit": featkit.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "pillow": PIL.__version__, "numpy": numpy.__version__,
            "machine": platform.machine()}
