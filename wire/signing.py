"""Ed25519 signatures on jobs (``cryptography``): key generation, signing, verification.

The collector signs every :class:`~wire.schema.Job` and :class:`~wire.schema.CancelJob` with its
private key; a device runs only jobs whose signature verifies against one of its trusted public keys.

* :func:`generate_keypair` writes ``<name>.key`` (PKCS8 PEM, mode 0600 whatever the umask) and
  ``<name>.pub`` (SubjectPublicKeyInfo PEM); :func:`secret_file_warning` says when a secret file sits in a
  git work tree that does not ignore it (a CLI prints that on stderr).
* ``key_id`` = the first 16 hex digits of the sha256 of the raw 32-byte public key.
* :func:`sign_job` returns a signed copy: ``job.signed(key_id, base64(signature over job.signing_bytes()))``.
* :func:`verify` raises :class:`SignatureError` with a one-line reason (unsigned, unknown key, bad signature).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from wire.errors import EdgebenchError
from wire.schema import CancelJob, Job

__all__ = [
    "SignatureError",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "load_trusted_keys",
    "secret_file_warning",
    "sign_job",
    "verify",
]

J = TypeVar("J", Job, CancelJob)
KeySource = str | Path | Ed25519PublicKey


class SignatureError(EdgebenchError):
    """A job is unsigned, signed by an unknown key, badly signed, or a key file is unusable."""


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(directory: str | Path, name: str = "collector") -> tuple[Path, Path]:
    """Write a new Ed25519 key pair as ``DIR/NAME.key`` (0600) and ``DIR/NAME.pub``; refuse to overwrite."""
    directory = Path(directory)
    if not name or "/" in name or name.startswith("."):
        raise SignatureError(f"invalid key name {name!r}")
    directory.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (key_path, pub_path):
        if path.exists():
            raise SignatureError(f"{path} already exists; refusing to overwrite a key")
    private = Ed25519PrivateKey.generate()
    key_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # the umask can only take bits away; this says exactly 0600
        f.write(key_pem)
    pub_path.write_bytes(pub_pem)
    return key_path, pub_path


def _git_work_tree(path: Path) -> Path | None:
    """The git work tree ``path`` is in (the nearest parent holding ``.git``), if any."""
    for parent in path.parents:
        if (parent / ".git").exists():
            return parent
    return None


def secret_file_warning(path: str | Path) -> str | None:
    """One line of warning when ``path`` (a private key, a password file) lies inside a git work tree
    that does not ignore it (``git check-ignore``; without git, inside a work tree is enough); else None."""
    path = Path(path).absolute()
    tree = _git_work_tree(path)
    if tree is None:
        return None
    try:
        ignored = subprocess.run(
            ["git", "-C", str(tree), "check-ignore", "-q", "--", str(path)],
            capture_output=True,
            timeout=10,
            check=False,
        )
        if ignored.returncode == 0:
            return None
    except (OSError, subprocess.SubprocessError):
        pass
    return (
        f"warning: {path} is a secret inside the git work tree {tree} and git does not ignore it: one "
        "`git add .` from a commit (keep it outside the repository, or list it in .gitignore)"
    )


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read private key {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read public key {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} is not an Ed25519 public key")
    return key


def load_trusted_keys(sources: Iterable[KeySource]) -> dict[str, Ed25519PublicKey]:
    """Public key files (or key objects) -> {key_id: key}."""
    keys: dict[str, Ed25519PublicKey] = {}
    for source in sources:
        key = source if isinstance(source, Ed25519PublicKey) else load_public_key(source)
        keys[key_id(key)] = key
    return keys


def sign_job(job: J, private_key_path: str | Path | Ed25519PrivateKey) -> J:
    """A copy of ``job`` (Job or CancelJob) carrying ``key_id`` and a base64 Ed25519 signature."""
    private = (
        private_key_path
        if isinstance(private_key_path, Ed25519PrivateKey)
        else load_private_key(private_key_path)
    )
    signature = private.sign(job.signing_bytes())
    return job.signed(key_id(private.public_key()), base64.b64encode(signature).decode("ascii"))


def verify(
    job: Job | CancelJob, trusted_public_keys: Iterable[KeySource] | Mapping[str, Ed25519PublicKey]
) -> str:
    """Check ``job``'s signature against the trusted keys; return its key id or raise SignatureError."""
    keys = (
        dict(trusted_public_keys)
        if isinstance(trusted_public_keys, Mapping)
        else load_trusted_keys(trusted_public_keys)
    )
    if not job.signature or not job.key_id:
        raise SignatureError("unsigned job")
    key = keys.get(job.key_id)
    if key is None:
        raise SignatureError(f"signed by unknown key {job.key_id!r}")
    try:
        signature = base64.b64decode(job.signature, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("signature is not valid base64") from None
    try:
        key.verify(signature, job.signing_bytes())
    except InvalidSignature:
        raise SignatureError(f"bad signature (key {job.key_id})") from None
    return job.key_id
