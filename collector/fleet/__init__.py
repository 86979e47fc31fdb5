"""Fleet operations: artifacts, signed job pushes, the chunk server, device enrollment."""
