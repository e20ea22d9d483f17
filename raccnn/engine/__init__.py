"""Training engine: trainer and checkpoint I/O."""
