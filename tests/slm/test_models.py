"""The model list: which models are offered, with which deployments, keys and prices."""

from __future__ import annotations

import pytest

from bus.errors import Rejected
from handlers.slm.models import (
    DEFAULT_FILE,
    available_models,
    environment,
    load_models,
    parse_models,
)
from kernel.settings import Settings
from schemas.base import Usage


def shipped(env: dict[str, str]) -> list[str]:
    return parse_models(DEFAULT_FILE.read_bytes(), env).available_models()


def test_without_keys_only_the_local_model_is_offered():
    assert shipped({}) == ["soma-local-dev"]


def test_an_openai_key_adds_the_openai_models():
    names = shipped({"OPENAI_API_KEY": "sk-test"})

    assert {"gpt-4o-mini", "gpt-4o", "soma-chat"} <= set(names)
    assert not any(name.startswith("claude") for name in names)


def test_an_anthropic_key_adds_the_claude_models():
    names = shipped({"ANTHROPIC_API_KEY": "sk-ant-test"})

    assert {"claude-haiku-4-5", "claude-sonnet-4-5", "soma-chat"} <= set(names)
    assert "gpt-4o" not in names


def test_a_keyless_compatible_server_is_offered_once_its_url_is_set():
    assert "llama3.2" not in shipped({})
    assert "llama3.2" in shipped({"OLLAMA_BASE_URL": "http://127.0.0.1:11434/v1"})


def test_a_fallback_list_keeps_only_the_deployments_that_have_keys():
    models = parse_models(DEFAULT_FILE.read_bytes(), {"ANTHROPIC_API_KEY": "sk-ant-test"})

    [only] = models.deployments_for("soma-chat")

    assert only.provider == "anthropic"
    assert only.api_key == "sk-ant-test"
    assert "sk-ant-test" not in repr(only)


def test_a_known_model_without_its_key_is_rejected_naming_the_variable():
    models = parse_models(DEFAULT_FILE.read_bytes(), {})

    with pytest.raises(Rejected, match="OPENAI_API_KEY"):
        models.deployments_for("gpt-4o")


def test_an_unknown_model_is_rejected_listing_what_is_available():
    models = parse_models(DEFAULT_FILE.read_bytes(), {})

    with pytest.raises(Rejected, match=r"unknown model 'gpt-17'.*soma-local-dev"):
        models.deployments_for("gpt-17")


def test_the_base_url_comes_from_the_named_variable():
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": "http://proxy.internal/v1"}

    [deployment] = parse_models(DEFAULT_FILE.read_bytes(), env).deployments_for("gpt-4o")

    assert deployment.base_url == "http://proxy.internal/v1"
    assert deployment.model == "gpt-4o"


def test_cost_uses_the_prices_per_million_tokens():
    env = {"OPENAI_API_KEY": "sk-test"}
    [deployment] = parse_models(DEFAULT_FILE.read_bytes(), env).deployments_for("gpt-4o")

    cost = deployment.cost(Usage(prompt_tokens=1_000_000, completion_tokens=500_000))

    assert cost == pytest.approx(2.50 + 5.00)


def test_keys_from_settings_count_as_environment():
    settings = Settings(OPENAI_API_KEY="sk-from-settings")

    assert environment(settings)["OPENAI_API_KEY"] == "sk-from-settings"


def test_the_models_file_can_be_replaced(tmp_path, monkeypatch):
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n  - name: house-model\n    deployments:\n"
        "      - {provider: local, model: soma-local-dev}\n"
    )
    monkeypatch.setenv("SOMA_MODELS_FILE", str(path))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    assert available_models(Settings()) == ["house-model"]


def test_a_mistyped_field_is_reported_with_the_file(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - name: x\n    deployments:\n      - {provider: local, modle: y}\n")

    with pytest.raises(ValueError, match=r"models\.yaml.*modle"):
        load_models(path, {})


def test_the_routing_policy_is_read_from_the_file():
    models = parse_models("routing: {attempts: 5, timeout: 9.5}\nmodels: []", {})

    assert (models.routing.attempts, models.routing.timeout) == (5, 9.5)
