"""Application shell: command line, server wiring, persistence, logging."""
