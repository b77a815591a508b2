"""`python -m kanal` is the `kanal` command."""

from kanal.entry import main

main()
