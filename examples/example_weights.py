"""What the examples share: where the fine-tuning example writes its checkpoint, and how the others find it.

The examples import this sibling module as scripts do (Python puts a script's folder first on ``sys.path``).
"""

import argparse
import os

FINETUNED = os.path.join("outputs", "examples", "finetuned.ckpt")  # examples/finetune_imagefolder.py's output


def default_weights(parser: argparse.ArgumentParser, ckpt_path, pretrained: bool) -> str:
    """``--ckpt_path`` as given, else the fine-tuning example's output; one line saying what to pass without it."""
    if ckpt_path is not None or pretrained:
        return ckpt_path or ""
    if not os.path.isfile(FINETUNED):
        parser.exit(
            2,
            f"{parser.prog}: no weights: {FINETUNED} does not exist yet; run examples/finetune_imagefolder.py "
            "first, or pass --ckpt_path <weights> or --pretrained --model <name>\n",
        )
    return FINETUNED
