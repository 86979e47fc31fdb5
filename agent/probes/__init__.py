"""What the device is and how it is doing: facts, memory by phase, board state (sysfs), energy."""
