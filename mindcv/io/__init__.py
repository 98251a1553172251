"""File formats and file I/O: the layer just above :mod:`mindcv.errors`.

Atomic writes (:mod:`~mindcv.io.atomic`), downloads and archive extraction (:mod:`~mindcv.io.download`), weight
files (:mod:`~mindcv.io.checkpoint`: ``.ckpt``, ``.safetensors`` and, through :mod:`~mindcv.io.torch_pickle`,
PyTorch files), the NaN/Inf check they need (:mod:`~mindcv.io.finite`) and progress bars that stay readable in a
log file (:mod:`~mindcv.io.progress`). Nothing here knows about model architectures, datasets or training, so
every other subpackage may import it and it imports none of them (``tests/test_layering.py`` checks the order).
The submodules are not imported here, so that an atomic write or a download does not import MindSpore, which
only :mod:`~mindcv.io.checkpoint` needs.
"""
