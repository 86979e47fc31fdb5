"""Which artifact to recommend, from host latencies with confidence intervals.

Candidates: ``ok`` artifacts (within the fidelity bounds; ``degraded``, ``no-op`` and ``failed`` never)
with a host latency, the fp32 reference among them. One artifact is *faster* than another only when its
interval says so: its upper bound is below the other's lower bound. The recommendation is taken among
the candidates that are not slower than the fastest one (point estimate) by that rule, nor slower than
the fp32 reference: of those, the smallest file, then the fewest passes (the simpler artifact), then the
lower median. So a variant that only *looks* 1.04x faster does not displace anything: a tie goes to the
smaller, simpler artifact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from wire.manifest import ManifestArtifact

Comparison = Literal["faster", "slower", "tie"]


def interval(a: ManifestArtifact) -> tuple[float, float] | None:
    """The latency interval; an artifact timed without one counts as a point."""
    if a.host_latency_ms is None:
        return None
    return a.host_latency_ci_ms or (a.host_latency_ms, a.host_latency_ms)


def compare(a: ManifestArtifact, b: ManifestArtifact) -> Comparison | None:
    """Is ``a`` faster than ``b``, slower, or a tie at the CI's level? None when either is untimed."""
    ia, ib = interval(a), interval(b)
    if ia is None or ib is None:
        return None
    if ia[1] < ib[0]:
        return "faster"
    if ib[1] < ia[0]:
        return "slower"
    return "tie"


def speedup_range(a: ManifestArtifact, ref: ManifestArtifact) -> tuple[float, float, float] | None:
    """``ref`` latency / ``a`` latency: (point, low, high) from the two intervals."""
    ia, ir = interval(a), interval(ref)
    if ia is None or ir is None or not (a.host_latency_ms and ref.host_latency_ms) or ia[0] <= 0:
        return None
    return ref.host_latency_ms / a.host_latency_ms, ir[0] / ia[1], ir[1] / ia[0]


def recommend(artifacts: Sequence[ManifestArtifact], reference: str = "fp32") -> str | None:
    timed = [a for a in artifacts if a.status == "ok" and a.host_latency_ms is not None]
    if not timed:
        return None
    ref = next((a for a in timed if a.name == reference), None)
    fastest = min(timed, key=lambda a: a.host_latency_ms)  # type: ignore[arg-type,return-value]
    contenders = [
        a for a in timed if compare(a, fastest) != "slower" and (ref is None or compare(a, ref) != "slower")
    ]
    best = min(contenders, key=lambda a: (a.size_bytes, len(a.passes), a.host_latency_ms))
    return best.name
