"""Site generation: everything ``python -m tools build`` writes into ``docs/`` before mkdocs runs."""
