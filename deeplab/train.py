"""`python -m deeplab.train`: the train command (`deeplab.cli.train`) as train.py runs it in a
checkout; from any folder once the package is installed."""

from deeplab.cli.train import main

if __name__ == "__main__":
    main()
