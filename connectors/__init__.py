"""Built-in connectors, one package per system; each imports only `kanal.core`."""
