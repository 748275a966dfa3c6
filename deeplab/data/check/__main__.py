"""`python -m deeplab.data.check`: runs the dataset checker command, `deeplab.cli.check`."""

from deeplab.cli.check import main

main()
