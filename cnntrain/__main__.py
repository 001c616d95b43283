"""``python -m cnntrain`` runs the same CLI as the ``cnntrain`` command."""
from cnntrain.cli import main

if __name__ == "__main__":
    main()
