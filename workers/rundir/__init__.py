"""The run directory: every file a run keeps under `<run_dir>`, and what is read back from them.

This is the bottom layer of deps-orch. The controller (`orchestrator/`) and the
workers (`workers/`) both write and read a run's files: its state, its stop and
cancel requests, its ledger tables, its forecast, its attempts. Everything they
share about those files lives here, and this package imports neither of them.
"""
