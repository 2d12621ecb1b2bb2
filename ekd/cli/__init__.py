"""The `ekd` command line."""
