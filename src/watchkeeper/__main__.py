"""``python -m watchkeeper``: the same CLI as the ``watchkeeper`` command."""

from watchkeeper.cli import main

main()
