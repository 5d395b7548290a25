"""Load generator and benchmarks (issue 4): `make bench`, `make bench-matrix`, routing-cost comparison."""
