"""Validation entry point (``python validate.py -c <recipe>.yaml --ckpt_path <ckpt>``).

The validation pipeline is delivered with the "Training and evaluation" issue; until then this script
says so instead of pretending to validate.
"""

import sys

if __name__ == "__main__":
    sys.exit("validate.py: the validation pipeline is not implemented yet (see the project's open issues)")
