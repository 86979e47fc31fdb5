"""Examples of every wire message kind, for the cross-language contract tests.

``python3 -m testkit.browser_wire`` prints ``{"<$defs name>": [message, ...], ...}`` as JSON on stdout:
the same examples tests/test_wire_jsonschema.py validates with Python's ``jsonschema``, for a node script
to validate with ajv (ArtifactChunk examples are chunk headers: the JSON line before the raw bytes).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from testkit.records import SHA, make_record, make_status
from wire.schema import (
    AccuracyInfo,
    ArtifactChunk,
    ArtifactRef,
    BenchSettings,
    BoardSample,
    BoardState,
    CancelJob,
    ChunkRequest,
    Job,
    JobEvent,
    OpProfile,
    Receipt,
    ReceiptRejection,
    RunConfig,
)

JOB_ID = "0b5c2f43-7c1e-4d0e-9a57-3b1f1d1e2a10"


def _rich_record() -> dict[str, Any]:
    """A result with every optional part filled (the builders leave some empty)."""
    from dataclasses import replace

    base = make_record("browser-1", job_id=JOB_ID)
    latency = replace(base.latency, repeat_medians_ms=(1.5, 1.6), samples_ms=(1.4, 1.5, 1.6))  # type: ignore[arg-type]
    record = replace(
        base,
        config=RunConfig(
            runtime="onnxruntime-web",
            runtime_version="1.22.0",
            threads=2,
            input_shapes={"x": (1, 16)},
            options={"execution_provider": "wasm", "simd": "true"},
        ),
        latency=latency,
        board=BoardState(samples=(BoardSample(t_s=0.5, temp_c=41.0),)),
        accuracy=AccuracyInfo(metric="top1_agreement", value=0.99, reference=1.0, delta=-0.01),
        profile=(OpProfile(op_type="Gemm", node="fc1", mean_ms=0.2, share=0.6, provider="wasm"),),
    )
    return record.to_dict()


def examples() -> dict[str, list[dict[str, Any]]]:
    ref = ArtifactRef(name="tiny_mlp.onnx", sha256=SHA, size_bytes=1234, format="onnx")
    job = Job(
        job_id=JOB_ID,
        created_at="2025-01-01T00:00:00.000Z",
        target="device:browser-1",
        artifacts=(ref,),
        settings=BenchSettings(preset="quick", threads=(1, 2), shapes={"x": (1, 16)}),
        expires_at="2025-01-01T01:00:00.000Z",
    )
    chunk = ArtifactChunk(sha256=SHA, index=0, total=2, size_bytes=1234, data=b"\x00" * 617)
    header = json.loads(chunk.to_bytes().partition(b"\n")[0])
    return {
        "ResultRecord": [
            make_record().to_dict(),
            make_record(status="failed").to_dict(),
            _rich_record(),
        ],
        "Job": [job.to_dict(), job.signed("k1", "c2lnbmF0dXJl").to_dict()],
        "CancelJob": [CancelJob(job_id=JOB_ID, created_at="2025-01-01T00:00:02.000Z").to_dict()],
        "JobEvent": [
            JobEvent(
                job_id=JOB_ID, device_id="browser-1", state="received", at="2025-01-01T00:00:00.100Z"
            ).to_dict(),
            JobEvent(
                job_id=JOB_ID,
                device_id="browser-1",
                state="done",
                at="2025-01-01T00:00:09.000Z",
                result_ids=("5d0f7a52-2c36-4c43-8d4c-5f0e8f7e3b11",),
                progress=1.0,
            ).to_dict(),
        ],
        "DeviceStatus": [make_status().to_dict(), make_status(state="offline", facts=False).to_dict()],
        "ChunkRequest": [
            ChunkRequest(device_id="browser-1", sha256=SHA).to_dict(),
            ChunkRequest(device_id="browser-1", sha256=SHA, indices=(1,), chunk_size=65536).to_dict(),
        ],
        "Receipt": [
            Receipt(
                device_id="browser-1",
                at="2025-01-01T00:00:10.000Z",
                committed=("r:5d0f7a52-2c36-4c43-8d4c-5f0e8f7e3b11",),
                rejected=(ReceiptRejection(key="e:x:done:y", reason="invalid-field"),),
            ).to_dict()
        ],
        "ArtifactChunk": [header],
    }


if __name__ == "__main__":
    json.dump(examples(), sys.stdout, indent=1)
    sys.stdout.write("\n")
