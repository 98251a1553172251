"""Training entry point (``python train.py -c configs/mnasnet/<recipe>.yaml``).

The training pipeline is delivered with the "Training and evaluation" issue; until then this script
says so instead of pretending to train.
"""

import sys

if __name__ == "__main__":
    sys.exit("train.py: the training pipeline is not implemented yet (see the project's open issues)")
