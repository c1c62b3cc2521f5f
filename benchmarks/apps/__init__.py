"""Server scripts the peers' venvs run: they import their own framework, never mlapi."""
