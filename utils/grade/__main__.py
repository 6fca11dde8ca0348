"""`python -m utils.grade SUBMISSIONS... --out DIR` (see utils/grade/cli.py)."""

from utils.grade.cli import main

main()
