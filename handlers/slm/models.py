"""The model list: public model names mapped to provider deployments, prices and routing policy.

It is data, not code, so an operator adds a model, a fallback or an OpenAI-compatible server by
editing YAML (``SOMA_MODELS_FILE``), and the keys stay in the environment: the file only names
the variables that hold them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import msgspec
import msgspec.yaml

from bus.errors import NotFound, Unavailable
from kernel.settings import Settings
from schemas.base import Usage

DEFAULT_FILE = Path(__file__).with_name("models.yaml")
MODELS_FILE_ENV = "SOMA_MODELS_FILE"

ProviderName = Literal["local", "openai", "anthropic"]


class RoutingPolicy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    attempts: int = 3
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    retry_after_max: float = 20.0
    timeout: float = 120.0


class _DeploymentEntry(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    provider: ProviderName
    model: str
    api_key_env: str | None = None
    base_url: str | None = None
    base_url_env: str | None = None
    input_per_1m: float = 0.0
    output_per_1m: float = 0.0
    timeout: float | None = None
    max_output_tokens: int | None = None


class _ModelEntry(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    deployments: list[_DeploymentEntry]
    # Every deployment accepts images in user messages; otherwise a message with one is refused.
    images: bool = False


class _ModelFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    routing: RoutingPolicy = msgspec.field(default_factory=RoutingPolicy)
    models: list[_ModelEntry] = []


@dataclass(frozen=True)
class Deployment:
    """One place a model runs, with its key and base URL already read from the environment."""

    provider: ProviderName
    model: str
    timeout: float
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    input_per_1m: float = 0.0
    output_per_1m: float = 0.0
    max_output_tokens: int | None = None

    @property
    def label(self) -> str:
        where = f" at {self.base_url}" if self.base_url else ""
        return f"{self.provider}:{self.model}{where}"

    def cost(self, usage: Usage) -> float:
        return (
            usage.prompt_tokens * self.input_per_1m + usage.completion_tokens * self.output_per_1m
        ) / 1_000_000


@dataclass(frozen=True)
class ModelList:
    routing: RoutingPolicy
    # Public name -> deployments usable with the current environment, in fallback order.
    deployments: dict[str, list[Deployment]]
    # Public name -> environment variables its unusable deployments are missing.
    missing: dict[str, list[str]]
    # Public names whose deployments accept images.
    with_images: frozenset[str] = frozenset()

    def available_models(self) -> list[str]:
        return [name for name, found in self.deployments.items() if found]

    def deployments_for(self, model: str) -> list[Deployment]:
        found = self.deployments.get(model)
        if found:
            return found
        if model in self.missing:
            needs = " or ".join(sorted(set(self.missing[model])))
            raise Unavailable(f"model {model!r} is not configured here: set {needs}")
        known = ", ".join(self.available_models()) or "none"
        raise NotFound(f"unknown model {model!r}; available: {known}")


def environment(settings: Settings) -> dict[str, str]:
    """Process environment plus the settings' own values, so keys from a settings file count."""
    env = dict(os.environ)
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name)
        if info.alias and isinstance(value, str) and value:
            env[info.alias] = value
    return env


def models_file(env: Mapping[str, str]) -> Path:
    configured = env.get(MODELS_FILE_ENV)
    return Path(configured) if configured else DEFAULT_FILE


def parse_models(text: str | bytes, env: Mapping[str, str]) -> ModelList:
    try:
        parsed = msgspec.yaml.decode(text, type=_ModelFile)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid model list: {exc}") from exc
    deployments: dict[str, list[Deployment]] = {}
    missing: dict[str, list[str]] = {}
    with_images = frozenset(entry.name for entry in parsed.models if entry.images)
    for entry in parsed.models:
        usable = deployments.setdefault(entry.name, [])
        for spec in entry.deployments:
            needs = _missing_env(spec, env)
            if needs:
                missing.setdefault(entry.name, []).extend(needs)
            else:
                usable.append(_resolve(spec, env, parsed.routing))
    return ModelList(parsed.routing, deployments, missing, with_images)


def load_models(path: Path, env: Mapping[str, str]) -> ModelList:
    try:
        return parse_models(path.read_bytes(), env)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def available_models(settings: Settings) -> list[str]:
    """Public model names usable with this environment (what ``/v1/models`` lists)."""
    env = environment(settings)
    return load_models(models_file(env), env).available_models()


def _missing_env(spec: _DeploymentEntry, env: Mapping[str, str]) -> list[str]:
    if spec.provider == "local":
        return []
    if spec.api_key_env:
        return [] if env.get(spec.api_key_env) else [spec.api_key_env]
    # A keyless deployment is a self-hosted server, so it must say where that server is.
    if _base_url(spec, env):
        return []
    return [spec.base_url_env] if spec.base_url_env else ["base_url"]


def _base_url(spec: _DeploymentEntry, env: Mapping[str, str]) -> str | None:
    from_env = env.get(spec.base_url_env) if spec.base_url_env else None
    return from_env or spec.base_url


def _resolve(spec: _DeploymentEntry, env: Mapping[str, str], routing: RoutingPolicy) -> Deployment:
    return Deployment(
        provider=spec.provider,
        model=spec.model,
        timeout=spec.timeout or routing.timeout,
        base_url=_base_url(spec, env),
        api_key=env.get(spec.api_key_env) if spec.api_key_env else None,
        input_per_1m=spec.input_per_1m,
        output_per_1m=spec.output_per_1m,
        max_output_tokens=spec.max_output_tokens,
    )
