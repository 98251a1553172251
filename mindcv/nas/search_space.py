"""The factorized hierarchical search space of MnasNet, decoded into the model zoo's block strings.

The network is cut into 7 blocks (the stem conv and the head are fixed). Every block chooses one layer
configuration that it repeats; only its first layer may have stride 2:

==============  ===================================================================================
``op``          regular conv (``cn``), depthwise-separable (``ds``), inverted bottleneck e3 / e6 (``ir``)
``kernel``      3 or 5
``se``          squeeze-excitation ratio 0 or 0.25
``skip``        identity residual (where shapes allow) or none (``noskip``)
``width``       output channels x{0.75, 1.0, 1.25} of the reference, rounded to a multiple of 8
``depth``       repeats of the reference -1 / 0 / +1 (at least 1)
==============  ===================================================================================

A candidate is a decision vector of 7 x 6 choice indices. The default reference (channels
16, 24, 40, 80, 92, 156, 320; repeats 1, 3, 3, 3, 2, 3, 1; strides 1, 2, 2, 2, 1, 2, 1) is chosen so that
both published networks are points of the space: MnasNet-B1 and MnasNet-A1 decode to exactly the zoo's
stage tables (B1 takes x1.25 of 156 = 192 channels in block 6, A1 x1.25 of 92 = 112 in block 5).
The reference channels differ from MobileNetV2's (the paper's reference), under which B1 and A1 are not
both representable.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InvalidArgumentError
from ..models.arch import decode_arch_def, encode_arch_def, format_arch_string, make_divisible, parse_arch_string

__all__ = ["SearchSpace", "DECISIONS", "Decisions"]

Decisions = List[int]

# (name, choices) of the per-block decisions, in decision-vector order
DECISIONS: Tuple[Tuple[str, tuple], ...] = (
    ("op", ("cn", "ds", "ir3", "ir6")),
    ("kernel", (3, 5)),
    ("se", (0.0, 0.25)),
    ("skip", ("skip", "noskip")),
    ("width", (0.75, 1.0, 1.25)),
    ("depth", (-1, 0, 1)),
)

_OP_STRINGS = {"cn": ("cn", None), "ds": ("ds", None), "ir3": ("ir", 3), "ir6": ("ir", 6)}


@dataclass
class SearchSpace:
    """Reference network plus per-block choices.

    Args:
        channels: reference output channels of the 7 blocks (before the model's width multiplier).
        repeats: reference repeats.
        strides: stride of each block's first layer (fixed).
        choices: per-decision choices, overriding :data:`DECISIONS` (e.g. ``{"width": [1.0]}`` to fix widths).
    """

    channels: Sequence[float] = (16, 24, 40, 80, 92, 156, 320)
    repeats: Sequence[int] = (1, 3, 3, 3, 2, 3, 1)
    strides: Sequence[int] = (1, 2, 2, 2, 1, 2, 1)
    choices: Dict[str, Sequence] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not len(self.channels) == len(self.repeats) == len(self.strides):
            raise InvalidArgumentError("channels, repeats and strides must have one entry per block")
        unknown = set(self.choices) - {name for name, _ in DECISIONS}
        if unknown:
            raise InvalidArgumentError(
                f"unknown search decisions {sorted(unknown)}; valid: {[n for n, _ in DECISIONS]}"
            )
        self.options: List[Tuple[str, tuple]] = []
        for name, default in DECISIONS:
            given = self.choices.get(name, default)
            if not isinstance(given, (list, tuple)):
                raise InvalidArgumentError(
                    f"search decision '{name}' accepts a non-empty subset of {list(default)}, got {given!r}"
                )
            values = tuple(given)
            bad = [v for v in values if v not in default]
            if bad or not values:
                raise InvalidArgumentError(
                    f"search decision '{name}' accepts a non-empty subset of {list(default)}, got {bad}"
                )
            self.options.append((name, values))

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.channels)

    @property
    def num_choices(self) -> List[int]:
        """Number of options of every entry of a decision vector (block-major)."""
        return [len(values) for _ in range(self.num_blocks) for _, values in self.options]

    @property
    def size(self) -> float:
        """Number of decision vectors (distinct vectors may decode to the same network)."""
        return float(np.prod(np.array(self.num_choices, dtype=np.float64)))

    # -- decoding --------------------------------------------------------------------------------
    def block_choice(self, decisions: Decisions, block: int) -> Dict[str, object]:
        per_block = len(self.options)
        chosen = decisions[block * per_block : (block + 1) * per_block]
        return {name: values[i] for (name, values), i in zip(self.options, chosen)}

    def decode(self, decisions: Decisions) -> List[str]:
        """The canonical stage table (one block string per block) of a decision vector."""
        self.validate(decisions)
        stages = []
        for block in range(self.num_blocks):
            c = self.block_choice(decisions, block)
            block_type, expansion = _OP_STRINGS[c["op"]]
            parts = [block_type, f"r{max(1, self.repeats[block] + c['depth'])}", f"k{c['kernel']}"]
            parts.append(f"s{self.strides[block]}")
            if expansion:
                parts.append(f"e{expansion}")
            parts.append(f"c{make_divisible(self.channels[block] * c['width'], 8)}")
            if c["se"]:
                parts.append(f"se{c['se']}")
            if c["skip"] == "noskip":
                parts.append("noskip")
            stages.append("_".join(parts))
        return encode_arch_def(decode_arch_def(stages))

    def arch_string(self, decisions: Decisions) -> str:
        """The ``|``-joined canonical architecture string (the cache key; ``create_model(arch=...)`` reads it)."""
        return format_arch_string(self.decode(decisions))

    def encode(self, arch: str) -> Optional[Decisions]:
        """A decision vector that decodes to ``arch`` (a ``|``-joined string or a list), or None if it is not a
        point of this space. Searched by constraint per block, so it is cheap."""
        target = encode_arch_def(decode_arch_def(parse_arch_string(arch) if isinstance(arch, str) else arch))
        if len(target) != self.num_blocks:
            return None
        decisions: Decisions = []
        for block in range(self.num_blocks):
            found = None
            for combo in np.ndindex(*[len(values) for _, values in self.options]):
                trial = [0] * (len(self.options) * self.num_blocks)
                trial[block * len(self.options) : (block + 1) * len(self.options)] = combo
                if self.decode(trial)[block] == target[block]:
                    found = list(combo)
                    break
            if found is None:
                return None
            decisions += found
        return decisions

    def validate(self, decisions: Decisions) -> None:
        sizes = self.num_choices
        if len(decisions) != len(sizes) or any(not 0 <= int(d) < n for d, n in zip(decisions, sizes)):
            raise InvalidArgumentError(
                f"decision vector must have {len(sizes)} entries with entry i in [0, n_i), got {decisions}"
            )

    # -- sampling ---------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> Decisions:
        """A uniformly random decision vector."""
        return [int(rng.integers(n)) for n in self.num_choices]

    def mutate(self, decisions: Decisions, rng: np.random.Generator) -> Decisions:
        """Change one decision to a different value (regularized evolution's mutation)."""
        sizes = self.num_choices
        mutable = [i for i, n in enumerate(sizes) if n > 1]
        child = list(decisions)
        i = int(rng.choice(mutable))
        child[i] = int((child[i] + 1 + rng.integers(sizes[i] - 1)) % sizes[i])
        return child

    def describe(self) -> str:
        lines = [f"{self.num_blocks} blocks x {len(self.options)} decisions, {self.size:.3g} decision vectors"]
        for name, values in self.options:
            lines.append(f"  {name}: {list(values)}")
        return "\n".join(lines)
