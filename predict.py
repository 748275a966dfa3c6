"""Predict label maps for images: python predict.py checkpoint=PATH input=PATH [output=DIR] [key=value ...]."""

from deeplab.cli.predict import main

if __name__ == "__main__":
    main()
