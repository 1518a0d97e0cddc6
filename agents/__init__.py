"""Training algorithms over masked vector environments."""
