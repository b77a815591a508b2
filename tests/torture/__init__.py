"""A randomized, seeded, model-based checker: hostile user sequences against the `kanal` CLI.

`scenario` draws a sequence from a seed, `erp` writes to the source and
says what the targets must hold, `sinks` reads every sink in one canonical
form, `harness` runs the sequence and reports divergences. `test_torture`
runs a few seeds in `make test`; `bench/torture.py --minutes N` runs new
seeds until the time is up.
"""
