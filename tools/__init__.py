"""LVLM Atlas tooling: load, validate and render the paper data, taxonomy, implementations and
notebooks into the documentation site. Run as ``python -m tools <command>``."""
