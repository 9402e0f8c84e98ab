"""A session bound to a tenant sets `app.tenant_id` once in each of its transactions: binding is
a round trip on every request, so a second one is a measurable cost (it was a quarter of the
one-SELECT ceiling), and a missing one would hide the tenant's rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, text

from app.config.database import bind_tenant, get_engine, get_session_factory, transaction

_CURRENT = text("SELECT current_setting('app.tenant_id', true)")


@contextmanager
def _tenant_bindings() -> Iterator[list[str]]:
    """The statements setting `app.tenant_id` sent on the app's engine meanwhile."""
    sent: list[str] = []

    def record(*args: Any) -> None:
        if "app.tenant_id" in args[2] and "set_config" in args[2]:
            sent.append(args[2])

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_a_tenant_transaction_sets_the_tenant_once() -> None:
    tenant_id = uuid.uuid4()
    with _tenant_bindings() as sent, transaction(tenant_id) as session:
        assert session.execute(_CURRENT).scalar() == str(tenant_id)
    assert len(sent) == 1


def test_each_later_transaction_of_a_bound_session_is_bound_once() -> None:
    tenant_id = uuid.uuid4()
    with _tenant_bindings() as sent, get_session_factory()() as session:
        bind_tenant(session, tenant_id)
        for _ in range(3):
            assert session.execute(_CURRENT).scalar() == str(tenant_id)
            session.commit()
    assert len(sent) == 3


def test_binding_a_transaction_that_already_began() -> None:
    tenant_id = uuid.uuid4()
    with _tenant_bindings() as sent, transaction() as session:
        assert session.execute(_CURRENT).scalar() in (None, "")
        bind_tenant(session, tenant_id)
        assert session.execute(_CURRENT).scalar() == str(tenant_id)
    assert len(sent) == 1
