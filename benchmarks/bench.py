"""Side-by-side speed benchmark; same as `rnnkit bench`. Usage: python benchmarks/bench.py [--quick]"""
import sys

from rnnkit.bench import main

if __name__ == "__main__":
    sys.exit(main(quick="--quick" in sys.argv[1:]))
