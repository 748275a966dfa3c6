"""`python -m deeplab.evaluate`: the evaluate command (`deeplab.cli.evaluate`) as evaluate.py runs it in a
checkout; from any folder once the package is installed."""

from deeplab.cli.evaluate import main

if __name__ == "__main__":
    main()
