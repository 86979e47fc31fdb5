"""The harness tests, benchmarks and tools share: a real mosquitto, real agent and collector processes,
record builders, hostile payloads, small disks. Not installed (beside tests/ and bench/, like them).
"""
