"""CI-native compiles: JUnit XML, step summaries, the baseline regression gate, papermill plans, progress, history.

Kept apart from the stages: the runner and the CLI call in through a few hooks (`hooks.py`), nothing here is
imported by a stage notebook.
"""

# The CLI's exit codes, documented in the README ("Use in CI").
EXIT_PASSED, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_REGRESSION = 0, 1, 2, 3
