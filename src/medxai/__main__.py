"""``python -m medxai`` (and ``torchrun -m medxai``): the command line."""

from medxai.cli import main

if __name__ == "__main__":
    main()
