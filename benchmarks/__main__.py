"""`python -m benchmarks`: the command line of benchmarks.cli."""

from benchmarks.cli import main

if __name__ == "__main__":
  main()
