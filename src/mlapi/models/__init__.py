"""The model registry: specs (no ML imports) and the runtime that loads and runs artifacts."""
