"""mindcv: a MindSpore model suite for MnasNet."""

# isort: off
from .utils.cpu_isa import apply_cpu_isa as _apply_cpu_isa

_apply_cpu_isa()  # before MindSpore's first CPU kernel: oneDNN fixes its instruction set then (utils/cpu_isa.py)
# isort: on
from . import data, loss, models, optim, scheduler, utils
from .data import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .models import *  # noqa: F401,F403
from .optim import *  # noqa: F401,F403
from .scheduler import *  # noqa: F401,F403
from .utils import *  # noqa: F401,F403
from .version import __version__

__all__ = (
    ["__version__"] + data.__all__ + loss.__all__ + models.__all__ + optim.__all__ + scheduler.__all__ + utils.__all__
)
