"""The one import of FAISS: a missing FAISS is a one-line install hint, not a traceback.

FAISS ships as two wheels that install the same ``faiss`` module, ``faiss-cpu`` and ``faiss-gpu-cu12``;
installing both makes whichever came last overwrite the other's files. So neither is a base dependency:
``pip install 'featkit[cpu]'`` or ``'featkit[gpu]'`` picks one (``[dev]`` includes ``[cpu]``).
"""

from __future__ import annotations

from featkit.errors import FeatkitError

try:
    import faiss
except ModuleNotFoundError:
    raise FeatkitError("FAISS is not installed: pip install 'featkit[cpu]' (or 'featkit[gpu]' on Linux with CUDA 12; "
                       "never both).") from None

__all__ = ["faiss"]
