"""``python -m mula_cli`` (also what ``torchrun -m mula_cli`` runs)."""

from mula_cli.cli import main

if __name__ == "__main__":
    main()
