"""Fixtures for the browser page's node-side tests (run by web/test/*.mjs with PYTHONPATH = the repo):
a key pair, the tiny MLP, and jobs signed by wire/signing.py. Prints one JSON object on stdout."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from testkit.models import make_mlp_onnx
from wire.artifacts import file_sha256
from wire.schema import ArtifactRef, BenchSettings, Job, new_id
from wire.signing import generate_keypair, load_private_key, sign_job
from wire.timestamps import to_wire


def main(out_dir: str, device: str) -> None:
    out = Path(out_dir)
    key_path, pub_path = generate_keypair(out / "keys", "collector")
    private = load_private_key(key_path)
    model = make_mlp_onnx(out / "tiny_mlp.onnx")
    now = datetime.now(timezone.utc)
    ref = ArtifactRef(
        name="tiny_mlp.onnx", sha256=file_sha256(model), size_bytes=model.stat().st_size, format="onnx"
    )
    settings = BenchSettings(preset="quick", min_time_s=0.3, max_time_s=2.0)

    def job(artifacts: tuple[ArtifactRef, ...]) -> Job:
        return Job(
            job_id=new_id(),
            created_at=to_wire(now),
            target=f"device:{device}",
            artifacts=artifacts,
            settings=settings,
            expires_at=to_wire(now + timedelta(hours=1)),
        )

    good = sign_job(job((ref,)), private)
    tampered = json.loads(sign_job(job((ref,)), private).to_json())
    tampered["settings"]["min_runs"] = 5  # changed after signing
    big = ArtifactRef(name="big.onnx", sha256="ab" * 32, size_bytes=20 * 2**20, format="onnx")
    oversize = sign_job(job((big,)), private)
    unsigned = job((ref,))
    print(
        json.dumps(
            {
                "pub": pub_path.read_text(),
                "model": str(model),
                "good": good.to_json(),
                "tampered": json.dumps(tampered),
                "oversize": oversize.to_json(),
                "unsigned": unsigned.to_json(),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
