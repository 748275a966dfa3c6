"""`python -m deeplab.predict`: the predict command (`deeplab.cli.predict`) as predict.py runs it in a
checkout; from any folder once the package is installed."""

from deeplab.cli.predict import main

if __name__ == "__main__":
    main()
