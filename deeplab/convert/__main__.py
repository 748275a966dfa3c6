"""`python -m deeplab.convert`: runs the conversion command, `deeplab.cli.convert`."""

from deeplab.cli.convert import main

main()
