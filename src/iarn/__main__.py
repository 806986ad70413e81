"""`python -m iarn ...` (and `torchrun -m iarn train ...`) run the command line."""

from .cli import entry

if __name__ == "__main__":
    entry()
