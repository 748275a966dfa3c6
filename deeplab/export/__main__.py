"""`python -m deeplab.export`: runs the export command, `deeplab.cli.export`."""

from deeplab.cli.export import main

main()
