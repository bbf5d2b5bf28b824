"""ml_collections configs; each file's docstring holds its run command."""
