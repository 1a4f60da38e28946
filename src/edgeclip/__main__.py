"""``python -m edgeclip`` (and ``torchrun -m edgeclip ...``, ``srun python -m edgeclip ...``): the command line."""

from edgeclip.cli import main

if __name__ == "__main__":
    main()
