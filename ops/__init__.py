"""Running the node: configuration, logging, the ``triage`` command and benchmarks."""
