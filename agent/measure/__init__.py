"""Measuring one model on this device: the bench protocol, its statistics, runtimes, the worker process."""
