"""The checks ``python -m refimpl check`` runs, one module per layer family."""
