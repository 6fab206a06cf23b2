"""``python -m examples.module_api``: see ``examples/module_api/cli.py`` for the flags."""
from .cli import main

main()
