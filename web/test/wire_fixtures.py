"""Cross-language fixtures for web/test/unit.test.mjs (PYTHONPATH = the repo).

``python3 wire_fixtures.py make`` prints {messages: [one JSON of every message kind, as Python writes it],
signed: [{json, signing}], stats: [{samples, latency}], pub}. ``python3 wire_fixtures.py check`` reads a
JSON list of messages written by the page's code on stdin and prints, per message, "ok" or Python's error.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path

from agent.measure.protocol import SampleKeeper
from agent.measure.stats import summarize
from wire.codec import encode
from wire.schema import (
    ArtifactInfo,
    ArtifactRef,
    BenchSettings,
    CancelJob,
    ChunkRequest,
    DeviceInfo,
    DeviceStatus,
    Job,
    JobEvent,
    Receipt,
    ReceiptRejection,
    ResultRecord,
    RunConfig,
    new_id,
    parse_message,
    utc_now,
)
from wire.signing import generate_keypair, load_private_key, sign_job


def _jobs(private) -> list[dict[str, str]]:
    cases = [
        (10.0, None, "m.onnx", {}),
        (1e-05, 1e16, 'ü☃😀"\\\n\x7f.onnx', {"x": (1, 3), "é": (2,)}),
        (0.2, 123456.789, "a/b c.onnx", {"😀": (1,), "\uffff": (3,)}),
        (3.0, 0.0001, "z", {}),
    ]
    out = []
    for mt, maxt, name, shapes in cases:
        job = Job(
            job_id=new_id(),
            created_at=utc_now(),
            target="all",
            artifacts=(ArtifactRef(name=name, sha256="a" * 64, size_bytes=10, format="onnx"),),
            settings=BenchSettings(
                preset="quick", threads=(1, 2), min_time_s=mt, max_time_s=maxt, shapes=shapes, cooldown_c=-0.0
            ),
            expires_at=utc_now(),
        )
        signed = sign_job(job, private)
        out.append({"json": signed.to_json(), "signing": signed.signing_bytes().decode()})
    raw = {
        "kind": "job",
        "schema_version": 1,
        "job_id": new_id(),
        "created_at": utc_now(),
        "target": "tag:lab",
        "artifacts": [{"name": "x.onnx", "sha256": "b" * 64, "size_bytes": 5, "format": "onnx"}],
        "settings": {"min_time_s": 2, "max_time_s": 1e300},
    }
    signed = sign_job(Job.from_dict(raw), private)
    raw.update(key_id=signed.key_id, signature=signed.signature)  # defaults left out, ints in float fields
    out.append({"json": json.dumps(raw), "signing": signed.signing_bytes().decode()})
    cancel = sign_job(CancelJob(job_id=new_id(), created_at=utc_now()), private)
    out.append({"json": cancel.to_json(), "signing": cancel.signing_bytes().decode()})
    return out


def _stats() -> list[dict]:
    rng = random.Random(1)
    cases = []
    for n in (1, 5, 7, 70, 700, 70000):
        samples = [int(rng.lognormvariate(13, 0.3)) for _ in range(n)]
        keeper = SampleKeeper()
        add = keeper.add
        for i, v in enumerate(samples):
            add(v)
            if i + 1 == keeper.exact_limit:
                add = keeper.spill()
        cases.append({"samples": samples, "latency": encode(summarize(keeper.kept(), warmup_runs=3))})
    return cases


def make() -> None:
    d = Path(tempfile.mkdtemp())
    key, pub = generate_keypair(d, "c")
    private = load_private_key(key)
    device = DeviceInfo(device_id="d1", cpu_cores=2, runtimes={"onnxruntime": "1.20"})
    art = ArtifactInfo(name="m.onnx", sha256="c" * 64, format="onnx", size_bytes=10)
    record = ResultRecord(
        result_id=new_id(),
        device=device,
        artifact=art,
        config=RunConfig(runtime="onnxruntime", runtime_version="1", threads=0),
        status="failed",
        started_at=utc_now(),
        finished_at=utc_now(),
        error="bad model",
    )
    messages = [
        record.to_json(),
        sign_job(
            Job(
                job_id=new_id(),
                created_at=utc_now(),
                target="all",
                artifacts=(ArtifactRef(name="m.onnx", sha256="c" * 64, size_bytes=10, format="onnx"),),
            ),
            private,
        ).to_json(),
        CancelJob(job_id=new_id(), created_at=utc_now()).to_json(),
        JobEvent(job_id=new_id(), device_id="d1", state="fetching", at=utc_now(), progress=0.5).to_json(),
        DeviceStatus(device_id="d1", state="online", at=utc_now(), reason="birth", facts=device).to_json(),
        ChunkRequest(device_id="d1", sha256="c" * 64, indices=(1, 2)).to_json(),
        Receipt(
            device_id="d1",
            at=utc_now(),
            committed=("r:x",),
            rejected=(ReceiptRejection("e:y", "invalid-field"),),
        ).to_json(),
    ]
    print(
        json.dumps(
            {"messages": messages, "signed": _jobs(private), "stats": _stats(), "pub": pub.read_text()}
        )
    )


def check() -> None:
    out = []
    for text in json.load(sys.stdin):
        try:
            parse_message(text)
            out.append("ok")
        except Exception as exc:  # the reason is the test's output
            out.append(f"{type(exc).__name__}: {exc}")
    print(json.dumps(out))


if __name__ == "__main__":
    {"make": make, "check": check}[sys.argv[1]]()
