"""`python -m kanal` is the `kanal` command."""

from kanal.cli import main

main()
