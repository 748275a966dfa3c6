"""Evaluate a checkpoint on a validation split: python evaluate.py checkpoint=PATH [key=value ...]."""

from deeplab.cli.evaluate import main

if __name__ == "__main__":
    main()
