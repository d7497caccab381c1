"""``python -m vidattn``: the same as the ``vidattn`` command."""

from vidattn.cli import main

main()
