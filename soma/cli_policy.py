"""``soma policy``: a tenant's constitution as the policy process reads it, and signing one.

``show`` reads the same files the policy process reads (``SOMA_POLICY_DIR`` or
``<SOMA_DATA_DIR>/policy``, and the trust file) with the same code, so the hash it prints is the
one decisions name. ``keygen`` and ``sign`` make the Ed25519 key pair and the detached signature
a tenant that requires signed constitutions needs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from soma import terminal

app = typer.Typer(
    help="""A tenant's constitution: its hash, principles and judge; signing it.

A constitution is the tenant's rule file (`<tenant>.yaml` in the policy folder): principles in
plain language plus the machine rules, named by its content hash. Every policy decision and every
chat result names the hash it was judged under.

**Examples**

    soma policy show --tenant acme
    soma policy show --tenant acme --json
    soma policy keygen --out acme-signing.pem      # prints the public key for the trust file
    soma policy sign .soma/policy/acme.yaml --key acme-signing.pem

**Environment**

* `SOMA_POLICY_DIR` — the tenant files (default `<SOMA_DATA_DIR>/policy`)
* `SOMA_POLICY_TRUST_FILE` — who must sign, with which keys (default
  `<SOMA_DATA_DIR>/policy-trust.yaml`)
""",
    rich_markup_mode="markdown",
    no_args_is_help=True,
)


@app.command()
def show(
    tenant: str = typer.Option("default", "--tenant", "-t", help="The tenant."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of text."),
) -> None:
    """The constitution in force for a tenant: hash, version, principles, judge, signing."""
    from handlers.policy.rules import PolicyError, RuleStore
    from kernel.constitution import TrustError, load_trust, trust_file
    from kernel.grants import InvalidTenant, policy_dir

    # The folder given outright needs no running system; otherwise it is that system's.
    explicit = os.environ.get("SOMA_POLICY_DIR") and os.environ.get("SOMA_POLICY_TRUST_FILE")
    settings = terminal.environment() if explicit else terminal.settings()
    try:
        trust = load_trust(trust_file(settings))
        store = RuleStore(policy_dir(settings), trust=trust)
        ruleset = store.get(tenant)
    except (PolicyError, TrustError, InvalidTenant) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    signing = trust.of(tenant)
    shown = {
        "tenant": tenant,
        "constitution": ruleset.constitution,
        "version": ruleset.version,
        "file": str(store.path(tenant)) if store.path(tenant).exists() else "(packaged default)",
        "description": ruleset.description,
        "signature_required": signing.require_signature,
        "principles": [{"id": p.id, "text": p.text} for p in ruleset.principles],
        "judge": None
        if ruleset.judge is None
        else {
            "model": ruleset.judge.model,
            "stages": sorted(ruleset.judge.stages),
            "timeout": ruleset.judge.timeout,
            "on_failure": "open" if ruleset.judge.fail_open else "closed",
        },
        "rules": len(ruleset.rules),
    }
    if as_json:
        typer.echo(json.dumps(shown, indent=2))
        return
    typer.echo(f"tenant        {tenant}")
    typer.echo(f"constitution  {ruleset.constitution}")
    typer.echo(f"version       {ruleset.version}")
    typer.echo(f"file          {shown['file']}")
    typer.echo(f"signed        {'required' if signing.require_signature else 'not required'}")
    typer.echo(f"rules         {len(ruleset.rules)}")
    if ruleset.judge is not None:
        how = "open" if ruleset.judge.fail_open else "closed"
        typer.echo(
            f"judge         {ruleset.judge.model}, {', '.join(sorted(ruleset.judge.stages))}, "
            f"{ruleset.judge.timeout:g}s, fails {how}"
        )
    typer.echo("principles" + ("" if ruleset.principles else "    none"))
    for principle in ruleset.principles:
        typer.echo(f"  {principle.id}: {principle.text}")


@app.command()
def keygen(
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the private key (PEM)."),
) -> None:
    """Make an Ed25519 key pair: the private key to a file, the public key on stdout."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from kernel.constitution import public_text

    if out.exists():
        typer.echo(f"error: {out} exists; choose another file", err=True)
        raise typer.Exit(1)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    out.touch(mode=0o600)
    out.write_bytes(pem)
    typer.echo(public_text(key.public_key()))
    print(f"private key in {out}; add the public key above to the tenant's keys", file=sys.stderr)


@app.command("sign")
def sign_file(
    file: Path = typer.Argument(..., help="The tenant's constitution, <tenant>.yaml."),
    key: Path = typer.Option(..., "--key", "-k", help="The Ed25519 private key (PEM)."),
) -> None:
    """Write <file>.sig: the signature of the file as it is now."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from kernel.constitution import sign, signature_path

    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    if not isinstance(private, Ed25519PrivateKey):
        typer.echo(f"error: {key} is not an Ed25519 private key", err=True)
        raise typer.Exit(1)
    target = signature_path(file)
    target.write_text(sign(file.read_bytes(), private))
    print(f"signed {file}: {target}", file=sys.stderr)
