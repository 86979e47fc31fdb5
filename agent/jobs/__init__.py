"""Signed jobs on the device: the job store, replay protection, chunked model fetch, the artifact cache."""
