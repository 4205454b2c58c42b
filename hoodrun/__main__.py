"""``python -m hoodrun`` is the ``hoodrun`` command."""

from hoodrun.cli import main

main()
