"""`python -m benchmarks [--quick]`: what `make bench` runs."""

from benchmarks import main

main()
