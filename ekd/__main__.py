"""`python -m ekd` is the `ekd` command."""

from ekd.cli.main import app

app()
