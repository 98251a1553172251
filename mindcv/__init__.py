"""mindcv: a MindSpore model suite for MnasNet."""

from . import data, models, utils
from .data import *  # noqa: F401,F403
from .models import *  # noqa: F401,F403
from .utils import *  # noqa: F401,F403
from .version import __version__

__all__ = ["__version__"] + data.__all__ + models.__all__ + utils.__all__
