"""The chaos suite (`make chaos`): the system as separate processes under a mixed load, through worker,
broker, database, model and API faults. Not part of the default test run (pyproject's `--ignore`)."""
