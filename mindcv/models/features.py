"""Feature extraction: run a classifier's cells in order and return the maps at chosen strides."""

from typing import Any, Dict, Iterator, List, Sequence, Tuple

from mindspore import Tensor, nn

from ..errors import InvalidArgumentError

__all__ = ["FeatureExtractWrapper"]


def _ordered_cells(net: nn.Cell, flatten_sequential: bool) -> Iterator[Tuple[str, nn.Cell]]:
    for name, cell in net.name_cells().items():
        if flatten_sequential and isinstance(cell, nn.SequentialCell):
            for child_name, child in cell.name_cells().items():
                yield f"{name}.{child_name}", child
        else:
            yield name, cell


class FeatureExtractWrapper(nn.Cell):
    """Wrap a model that declares ``feature_info`` so that it returns a list of feature maps.

    The model's top-level cells must be registered in the order they run, each used once (true for
    :class:`~mindcv.models.mnasnet.MnasNet`); with the model attribute ``flatten_sequential`` the
    stages of a ``SequentialCell`` are visited one by one. Cells after the deepest requested feature
    (the head, the classifier) are dropped; parameter names stay those of the full model.

    Args:
        net: the model; ``net.feature_info`` is a list of ``{"chs", "reduction", "name"}`` dicts.
        out_indices: which entries of ``feature_info`` to return.
    """

    def __init__(self, net: nn.Cell, out_indices: Sequence[int] = (0, 1, 2, 3, 4)) -> None:
        super().__init__(auto_prefix=False)
        feature_info: List[Dict[str, Any]] = getattr(net, "feature_info", None)
        if not feature_info:
            raise InvalidArgumentError(
                f"{type(net).__name__} declares no feature_info, so features cannot be extracted"
            )
        out_indices = tuple(out_indices)
        bad = [i for i in out_indices if not -len(feature_info) <= i < len(feature_info)]
        if bad or not out_indices:
            raise InvalidArgumentError(
                f"out_indices {out_indices} invalid: the model has {len(feature_info)} feature levels "
                f"(0..{len(feature_info) - 1})"
            )
        out_indices = tuple(sorted({i % len(feature_info) for i in out_indices}))
        wanted = {feature_info[i]["name"]: i for i in out_indices}
        cells, self.return_index = [], []
        for name, cell in _ordered_cells(net, getattr(net, "flatten_sequential", False)):
            cells.append(cell)
            if name in wanted:
                self.return_index.append(len(cells) - 1)
                wanted.pop(name)
            if not wanted:
                break
        if wanted:
            raise InvalidArgumentError(
                f"feature points {sorted(wanted)} are not top-level cells of {type(net).__name__}"
            )
        original_names = {id(p): p.name for p in net.get_parameters()}
        # the cell paths the parameters had in the model: weights are matched by them (load_state_dict_into)
        self.source_param_paths = {p.name: path for path, p in net.parameters_and_names()}
        self.layers = nn.CellList(cells)
        # re-parenting renames parameters ("0.weight"); keep the model's names so that checkpoints of the
        # backbone stay loadable into (and from) the full model
        for param in self.layers.get_parameters():
            param.name = original_names[id(param)]
        self.feature_info = [dict(feature_info[i]) for i in out_indices]
        self.out_indices = out_indices
        self._out_channels = [info["chs"] for info in self.feature_info]

    @property
    def out_channels(self) -> List[int]:
        """Channels of each returned feature map."""
        return self._out_channels

    @property
    def reductions(self) -> List[int]:
        """Stride of each returned feature map relative to the input."""
        return [info["reduction"] for info in self.feature_info]

    def construct(self, x: Tensor) -> List[Tensor]:
        out = []
        for i, cell in enumerate(self.layers):
            x = cell(x)
            if i in self.return_index:
                out.append(x)
        return out
