"""What every other part stands on: the one exception root, the caps on what users may
store, checked input values, the project directory and its safe filesystem walks,
connections to the project's database, pacing, where this process runs.

See docs/architecture.md §2."""
