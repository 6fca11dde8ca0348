"""Chapter benchmarks that `python -m utils.bench` runs: each module here defines `run() -> None`,
which prints its medians (and any ratio against a peer library, measured in the same run)."""
