"""Detached Ed25519 signatures over a bundle's manifest.json (docs/BUNDLE.md, "Integrity and signing").

manifest.json lists every other file of the bundle with its size and sha256, and the loader checks
them, so one signature over the exact bytes of manifest.json covers the whole bundle. The signature
lies beside the manifest in `manifest.json.sig`: the 64-byte Ed25519 signature in base64, one line.

Keys are PEM files: the private key unencrypted PKCS#8 (`-----BEGIN PRIVATE KEY-----`), the public key
SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`); `generate_key_pair` writes both, and
`openssl genpkey -algorithm ed25519` makes the same kind. A key file that is missing or holds no Ed25519
key of the right half is a `ValueError` naming the file; a signature that is missing, malformed or does
not verify is a `BundleError` about `manifest.json.sig`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lmroute.bundle.errors import BundleError
from lmroute.bundle.files import read_regular_file
from lmroute.bundle.manifest import MANIFEST_NAME

__all__ = [
    "SIGNATURE_NAME",
    "SIGNATURE_BYTES",
    "generate_key_pair",
    "key_fingerprint",
    "load_private_key",
    "load_public_key",
    "sign_bundle",
    "verify_manifest_signature",
]

SIGNATURE_NAME = MANIFEST_NAME + ".sig"
SIGNATURE_BYTES = 64
MAX_SIGNATURE_FILE_BYTES = 4096  # a signature file holds 88 characters of base64


def key_fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """The first 16 hex of the sha256 of the raw 32-byte public key (names a key pair in messages)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _read_pem(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such {what} file") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the {what} ({exc.strerror})") from None


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """The Ed25519 public key of a PEM file; ValueError naming the file when it holds none."""
    file = Path(path)
    blob = _read_pem(file, "public key")
    try:
        key = serialization.load_pem_public_key(blob)
    except ValueError:
        raise ValueError(f"{file}: not a PEM public key (expected -----BEGIN PUBLIC KEY-----)") from None
    except UnsupportedAlgorithm as exc:  # e.g. an EC key on a curve the library does not know
        raise ValueError(f"{file}: not an Ed25519 public key (an unsupported algorithm: {exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{file}: not an Ed25519 public key ({type(key).__name__})")
    return key


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The Ed25519 private key of an unencrypted PEM file; ValueError naming the file when it holds none."""
    file = Path(path)
    blob = _read_pem(file, "private key")
    try:
        key = serialization.load_pem_private_key(blob, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{file}: not an unencrypted PEM private key (expected -----BEGIN PRIVATE KEY-----)") from None
    except UnsupportedAlgorithm as exc:  # e.g. an EC key on a curve the library does not know
        raise ValueError(f"{file}: not an Ed25519 private key (an unsupported algorithm: {exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{file}: not an Ed25519 private key ({type(key).__name__})")
    return key


def generate_key_pair(prefix: str | Path) -> tuple[Path, Path]:
    """Write a new key pair: `<prefix>.key` (private, PKCS#8 PEM, mode 0600) and `<prefix>.pub` (public,
    SubjectPublicKeyInfo PEM); return their paths. Existing files are never overwritten
    (FileExistsError); a prefix that names a directory (or ends in a slash) is refused (ValueError): the
    files would land beside it, not in it; so is one under a file (ValueError naming that file)."""
    if str(prefix).endswith(("/", os.sep)) or Path(prefix).is_dir():
        raise ValueError(
            f"{prefix}: a directory; the prefix names the files (e.g. {Path(prefix) / 'bundles'} writes "
            f"{Path(prefix) / 'bundles.key'} and {Path(prefix) / 'bundles.pub'})"
        )
    private_path, public_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    above = next((p for p in private_path.parents if os.path.lexists(p)), None)
    if above is not None and not above.is_dir():  # mkdir would say only "File exists"
        raise ValueError(f"{prefix}: {above} is not a directory (the key files go in a directory)")
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path}: already exists (a key is never overwritten)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def sign_bundle(bundle_dir: str | Path, key: Ed25519PrivateKey) -> Path:
    """Sign the exact bytes of `<bundle_dir>/manifest.json` and write `manifest.json.sig` beside it
    (replaced atomically); return its path. The caller checks the bundle first: a signature vouches
    for whatever the manifest says."""
    root = Path(bundle_dir)
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(MANIFEST_NAME, "missing")
    from lmroute.bundle.writer import write_text_atomic  # the writer's imports are heavy; signing stays light

    signature = key.sign(manifest_path.read_bytes())
    out = root / SIGNATURE_NAME
    write_text_atomic(out, base64.b64encode(signature).decode("ascii") + "\n")  # no temporary file left on failure
    return out


def verify_manifest_signature(bundle_dir: str | Path, manifest_bytes: bytes, key: Ed25519PublicKey) -> None:
    """Check `<bundle_dir>/manifest.json.sig` against `manifest_bytes` (manifest.json exactly as the
    caller read it); raise BundleError naming manifest.json.sig unless it verifies with `key`."""
    path = Path(bundle_dir) / SIGNATURE_NAME
    fingerprint = key_fingerprint(key)
    if not os.path.lexists(path):  # something else there (a directory, a link, a device) is said below
        raise BundleError(
            SIGNATURE_NAME, f"missing: the bundle is not signed (a signature by key {fingerprint} is required)"
        )
    text = read_regular_file(path, SIGNATURE_NAME, limit=MAX_SIGNATURE_FILE_BYTES).strip()
    try:
        signature = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    if len(signature) != SIGNATURE_BYTES:
        raise BundleError(
            SIGNATURE_NAME, f"not a signature (expected {SIGNATURE_BYTES} bytes of Ed25519 signature in base64)"
        )
    try:
        key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise BundleError(
            SIGNATURE_NAME,
            f"does not verify with key {fingerprint}: manifest.json was changed after it was signed, "
            "or it was signed with another key",
        ) from None
