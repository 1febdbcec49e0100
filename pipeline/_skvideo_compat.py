"""The one place that makes scikit-video 1.1.11 import and read under NumPy 2.

skvideo's reader still calls ``np.int`` and ``np.float``, which NumPy removed
in 1.24/2.0. They were plain aliases of the builtins, so restoring them is exact.
(``ndarray.tostring`` is only used by skvideo's *writer*, which we don't use:
toy videos are encoded by piping raw frames to ffmpeg.)
Import skvideo only through ``skvideo_io()``.
"""

import numpy as np

_ALIASES = {"int": int, "float": float, "bool": bool, "object": object}


def skvideo_io():
    for name, typ in _ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, typ)
    import skvideo.io  # noqa: PLC0415  (after the aliases exist)

    return skvideo.io
