"""A service author's messages, saga definitions and processes join ours without our files
changing: registration, discovery through entry points, and `soma up --with`."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import EntryPoint

import pytest

from bus.errors import NotFound
from kernel.processes import PROCESSES, UnknownProcess, parse_spec, with_extra
from sagas.definition import Complete, Definition, Run
from sagas.registry import Registry
from schemas import catalogue, extensions
from schemas.base import Message
from schemas.catalogue import CatalogueConflict, UnknownMessage, by_subject, of_type
from schemas.common import CommandFailed


class LedgerPost(Message):
    """Post an entry to the ledger."""

    amount_cents: int


class LedgerPosted(Message):
    """An entry was posted."""

    entry_id: str


class OtherPost(Message):
    amount_cents: int


LEDGER = [
    extensions.command("ledger", "post", LedgerPost),
    extensions.event("ledger", "posted", LedgerPosted),
]


@pytest.fixture(autouse=True)
def catalogue_restored() -> Iterator[None]:
    """Each test starts from the catalogue as Soma ships it, and leaves it so."""
    names, types = dict(catalogue.CATALOGUE), dict(catalogue._BY_TYPE)
    loaded, problems = set(extensions._loaded), dict(extensions.problems)
    yield
    for table, saved in ((catalogue.CATALOGUE, names), (catalogue._BY_TYPE, types)):
        table.clear()
        table.update(saved)  # type: ignore[attr-defined]
    extensions._loaded.clear()
    extensions._loaded.update(loaded)
    extensions.problems.clear()
    extensions.problems.update(problems)


def test_registered_messages_are_found_by_subject_and_by_type() -> None:
    extensions.register(LEDGER)
    assert by_subject("soma.cmd.acme.ledger.post").type is LedgerPost
    assert of_type(LedgerPosted).subject("acme") == "soma.evt.acme.ledger.posted"


def test_a_registered_service_gets_its_failed_event() -> None:
    extensions.register(LEDGER)
    assert by_subject("soma.evt.acme.ledger.failed").type is CommandFailed


def test_registering_the_same_messages_again_changes_nothing() -> None:
    extensions.register(LEDGER)
    extensions.register(LEDGER)
    assert of_type(LedgerPost).name == "ledger.post"


def test_a_message_on_one_of_somas_services_is_refused() -> None:
    with pytest.raises(CatalogueConflict, match="one of Soma's own"):
        extensions.register([extensions.command("policy", "override", OtherPost)])
    with pytest.raises(UnknownMessage):
        by_subject("soma.cmd.acme.policy.override")


def test_a_name_taken_by_another_type_is_refused_and_nothing_is_registered() -> None:
    extensions.register(LEDGER)
    clash = [
        extensions.command("journal", "post", OtherPost),
        extensions.command("ledger", "post", OtherPost),
    ]
    with pytest.raises(CatalogueConflict, match="already registered"):
        extensions.register(clash)
    with pytest.raises(UnknownMessage):
        by_subject("soma.cmd.acme.journal.post")


def test_a_subject_token_with_a_dot_is_refused() -> None:
    with pytest.raises(ValueError, match="subject token"):
        extensions.command("ledger", "post.now", LedgerPost)


def _points(*values: str) -> list[EntryPoint]:
    return [EntryPoint(f"p{i}", v, extensions.GROUP) for i, v in enumerate(values)]


def test_discovery_registers_what_an_entry_point_names() -> None:
    added = extensions.discover(lambda: _points(f"{__name__}:LEDGER"))
    assert {e.name for e in added} == {"ledger.post", "ledger.posted"}
    assert by_subject("soma.evt.acme.ledger.posted").type is LedgerPosted


def test_an_entry_point_that_does_not_load_is_reported_and_the_others_register() -> None:
    extensions.discover(lambda: _points("no_such_package.messages:MESSAGES", f"{__name__}:LEDGER"))
    assert by_subject("soma.cmd.acme.ledger.post").type is LedgerPost
    [(point, reason)] = extensions.problems.items()
    assert "no_such_package" in point and "ModuleNotFoundError" in reason


def _definition(saga_type: str) -> Definition[dict]:
    d: Definition[dict] = Definition(saga_type, version=1, input_type=dict)

    @d.start
    def begin(run: Run[dict]) -> Complete:
        return Complete()

    return d


def test_the_saga_registry_looks_for_new_definitions_when_asked_for_an_unknown_type() -> None:
    installed: list[Definition[dict]] = []
    registry = Registry([_definition("chat_turn")], discover=lambda: installed)
    with pytest.raises(NotFound, match="unknown saga type 'ledger_close'"):
        registry.latest("ledger_close")
    installed.append(_definition("ledger_close"))
    registry._scanned = None  # as after a package was installed
    assert registry.latest("ledger_close").saga_type == "ledger_close"


def test_with_adds_a_process_to_the_default_set() -> None:
    spec = with_extra(None, "billing=acme.billing.service:build")
    chosen = parse_spec(spec)
    assert set(chosen) == {*PROCESSES, "billing"}
    assert chosen["billing"].target == "acme.billing.service:build"
    # Handlers start before the saga runner and the gateway.
    assert list(chosen).index("billing") < list(chosen).index("sagas")


def test_with_adds_to_a_chosen_subset() -> None:
    assert set(parse_spec(with_extra("policy,sagas", "billing=acme.billing:build"))) == {
        "policy",
        "sagas",
        "billing",
    }


def test_with_refuses_an_entry_that_is_not_a_factory() -> None:
    with pytest.raises(UnknownProcess, match=r"expected name=package\.module:factory"):
        with_extra(None, "billing=acme.billing")


def test_soma_up_refuses_a_with_entry_that_is_not_a_factory() -> None:
    from typer.testing import CliRunner

    from soma.cli import app

    result = CliRunner().invoke(app, ["up", "--with", "billing=acme.billing"])
    assert result.exit_code == 2
    assert "expected name=package.module:factory" in result.output
