"""`python -m deeplab.data.annotations`: runs the annotation import command, `deeplab.cli.annotations`."""

from deeplab.cli.annotations import main

main()
