"""The benchmark driver's modules; bench/run is the entry point and only wires them together."""
