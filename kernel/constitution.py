"""What makes a tenant's rule file a constitution: its content hash, and who may sign it.

A constitution is identified by the SHA-256 of what it says — the tenant file's bytes, and the
packaged default's when the file builds on it — so two processes that judge under the same text
name the same hash, and an auditor can tell which rules applied to any decision.

Signing is the tenant's choice, made outside the constitution: the trust file
(``$SOMA_POLICY_TRUST_FILE``, else ``<SOMA_DATA_DIR>/policy-trust.yaml``) lists, per tenant,
whether a signature is required and the Ed25519 public keys that may sign::

    tenants:
      acme:
        require_signature: true
        keys:
          - 3q2+7wYh0m6Xx1Yc7h2b9p0gkq2q1m8wJ3o0x2m5K4E=    # raw 32-byte key, base64
          - |                                              # or a PEM public key
            -----BEGIN PUBLIC KEY-----
            ...

The trust is kept apart from the constitutions so that whoever may edit a tenant's rules cannot
also choose who signs them. The signature is detached: ``<tenant>.yaml.sig`` holds the base64
Ed25519 signature of the exact bytes of ``<tenant>.yaml`` (``soma policy sign`` writes it).
The policy, tools and memory processes all verify it, so an unsigned file changes no decision
and no grant. The trust file is read when a process starts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kernel.settings import Settings

TRUST_FILE_ENV = "SOMA_POLICY_TRUST_FILE"
SIGNATURE_SUFFIX = ".sig"


class TrustError(Exception):
    """A trust file that cannot be read or holds a key that is not an Ed25519 public key."""


class SignatureRefused(Exception):
    """A constitution whose tenant requires a signature, and which has no valid one."""


def content_hash(source: bytes, base: bytes | None = None) -> str:
    """``sha256:<hex>`` of a tenant file, and of the base it builds on when it does."""
    digest = hashlib.sha256(source)
    if base is not None:
        digest.update(b"\0" + base)
    return "sha256:" + digest.hexdigest()


def signature_path(path: Path) -> Path:
    return path.with_name(path.name + SIGNATURE_SUFFIX)


# ----------------------------------------------------------------------------- trust


class _TenantTrustSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    require_signature: bool = False
    keys: list[str] = []


class _TrustFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    tenants: dict[str, _TenantTrustSpec] = {}


@dataclass(frozen=True)
class TenantTrust:
    require_signature: bool = False
    keys: tuple[Ed25519PublicKey, ...] = ()


@dataclass(frozen=True)
class Trust:
    """Which tenants require signed constitutions, and the keys each accepts."""

    tenants: Mapping[str, TenantTrust] = field(default_factory=dict)

    def of(self, tenant: str) -> TenantTrust:
        return self.tenants.get(tenant, TenantTrust())


def trust_file(settings: Settings) -> Path:
    """``$SOMA_POLICY_TRUST_FILE`` when set, else ``<SOMA_DATA_DIR>/policy-trust.yaml``."""
    configured = os.environ.get(TRUST_FILE_ENV)
    return Path(configured) if configured else settings.data_dir / "policy-trust.yaml"


def load_trust(path: Path) -> Trust:
    """The trust file at ``path``; none at all means no tenant requires a signature."""
    try:
        source = path.read_bytes()
    except FileNotFoundError:
        return Trust()
    except OSError as exc:
        raise TrustError(f"{path}: cannot be read: {exc}") from exc
    try:
        data = yaml.safe_load(source) or {}
        spec = msgspec.convert(data, type=_TrustFile)
    except (yaml.YAMLError, msgspec.ValidationError) as exc:
        raise TrustError(f"{path}: {exc}") from exc
    tenants = {}
    for tenant, own in spec.tenants.items():
        keys = tuple(public_key(text, f"{path}: tenants.{tenant}.keys") for text in own.keys)
        if own.require_signature and not keys:
            raise TrustError(
                f"{path}: tenant {tenant!r} requires a signature but lists no keys; "
                "add its Ed25519 public keys under keys"
            )
        tenants[tenant] = TenantTrust(own.require_signature, keys)
    return Trust(tenants)


def public_key(text: str, where: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM or from its 32 raw bytes in base64."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise TrustError(f"{where}: {type(key).__name__} is not an Ed25519 key")
            return key
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error) as exc:
        raise TrustError(f"{where}: not an Ed25519 public key: {exc}") from exc


def public_text(key: Ed25519PublicKey) -> str:
    """A public key as the trust file writes it: its 32 raw bytes in base64."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


# ----------------------------------------------------------------------------- signatures


def sign(source: bytes, key: Ed25519PrivateKey) -> str:
    """The content of ``<tenant>.yaml.sig`` for ``source``."""
    return base64.b64encode(key.sign(source)).decode() + "\n"


def verify(tenant: str, source: bytes, signature: bytes | None, trust: TenantTrust) -> None:
    """Return when ``source`` may load for ``tenant``; else ``SignatureRefused`` saying why."""
    if not trust.require_signature:
        return
    if signature is None:
        raise SignatureRefused(
            f"tenant {tenant!r} requires a signed constitution and this one is unsigned; "
            "sign it with one of the tenant's keys (`soma policy sign`) and write the "
            "signature beside it as <tenant>.yaml.sig"
        )
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
    except binascii.Error:
        raw = b""
    for key in trust.keys:
        try:
            key.verify(raw, source)
        except InvalidSignature:
            continue
        return
    raise SignatureRefused(
        f"tenant {tenant!r} requires a signed constitution and its signature does not verify "
        "with any of the tenant's keys; sign the file as it is now, with a key listed in the "
        "trust file"
    )
