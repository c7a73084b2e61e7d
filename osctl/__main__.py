"""`python -m osctl` runs the command line (also what torchrun re-launches)."""

from osctl.cli import main

if __name__ == "__main__":
    main()
