"""`python -m deeplab.bench`: runs the benchmark command, `deeplab.cli.bench`."""

from deeplab.cli.bench import main

main()
