"""Idempotency-Key on POSTs (SPEC 4, Stripe's semantics): a retried request is answered, not re-run.

A request with a key claims it in its own transaction, under a transaction-scoped advisory lock:
- the lock is held while the request runs, so an identical request racing it is told 409
  `idempotency_key_in_use` at once instead of waiting;
- the claim row commits with the request's work (an outbound call commits its reservation
  before calling Twilio, so from then on the row itself says "in flight": 409 as well);
- the response is stored before it is sent (`Claim.finish`, from app/middleware.py), and replayed
  to every retry for 24 hours with `Idempotent-Replayed: true`;
- a response that says retry (5xx, 429) is not stored: the key is released and a retry runs anew.
A process that dies after its work committed but before the response was stored leaves the key
in flight (409) until it expires: a request is never run twice.

A tenant key's keys live in `idempotency_keys` (the tenant's, under RLS: one key space for all its
API keys); the platform admin's in `admin_idempotency_keys`, whatever tenant the path names.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from app import crypto
from app.config.database import system_scope, transaction
from app.errors import Conflict, InvalidInput
from app.models import AdminIdempotencyKey, IdempotencyKey
from app.models.base import new_id, utcnow

KEY_LIFETIME = timedelta(hours=24)
# 1-255 printable ASCII characters (SPEC 4).
_VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}")
# Not replayed: recomputed for the replay, or the original request's own.
_UNSTORED_HEADERS = frozenset({b"content-length", b"x-request-id", b"date", b"server"})

_TENANT = cast(Table, IdempotencyKey.__table__)
_ADMIN = cast(Table, AdminIdempotencyKey.__table__)


class InvalidIdempotencyKey(InvalidInput):
    code = "invalid_idempotency_key"
    default_detail = "Idempotency-Key must be 1-255 printable ASCII characters."


class IdempotencyKeyReused(InvalidInput):
    code = "idempotency_key_reused"
    default_detail = (
        "This Idempotency-Key was used with another request (route or body); use a new key."
    )


class IdempotencyKeyInUse(Conflict):
    code = "idempotency_key_in_use"
    default_detail = "A request with this Idempotency-Key is still running; retry shortly."

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "1"})


class StoredResponse(Exception):
    """The first response to this key: raised to answer the retry with it."""

    def __init__(self, status_code: int, headers: list[tuple[str, str]], body: bytes) -> None:
        super().__init__(status_code)
        self.status_code, self.headers, self.body = status_code, headers, body


def fingerprint(method: str, path: str, query: bytes, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode("utf-8", "surrogateescape"), query, body):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


@dataclass
class Claim:
    """A key this request holds; `finish` or `abandon` it once the response is known."""

    tenant_id: uuid.UUID | None  # None: the platform admin's
    key_hash: str
    fingerprint: str

    @property
    def _table(self) -> Table:
        return _ADMIN if self.tenant_id is None else _TENANT

    def _where(self) -> list[Any]:
        table = self._table
        conditions = [table.c.key_hash == self.key_hash]
        if self.tenant_id is not None:
            conditions.append(table.c.tenant_id == self.tenant_id)
        return conditions

    def finish(self, status_code: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Store the response for the retries, or release the key if the response says retry."""
        if status_code >= 500 or status_code == 429:
            self.abandon()
            return
        stored = [
            [name.decode("latin-1"), value.decode("latin-1")]
            for name, value in headers
            if name.lower() not in _UNSTORED_HEADERS
        ]
        # Encrypted: a webhook's create / rotate-secret response holds its secret in plaintext.
        values = {
            "status_code": status_code,
            "response_headers": stored,
            "response_body": crypto.encrypt_bytes(body),
        }
        table = self._table
        with transaction(self.tenant_id) as session:
            done = session.execute(
                update(table)
                .where(*self._where(), table.c.status_code.is_(None))
                .where(table.c.fingerprint == self.fingerprint)
                .values(**values, updated_at=func.now())
            )
            if done.rowcount == 0:  # type: ignore[attr-defined]
                # The request rolled back (a 4xx): its claim went with it; its answer is stored.
                row = {"id": new_id(), "key_hash": self.key_hash, "fingerprint": self.fingerprint}
                if self.tenant_id is not None:
                    row["tenant_id"] = self.tenant_id
                session.execute(pg_insert(table).values(**row, **values).on_conflict_do_nothing())

    def abandon(self) -> None:
        """Release the key (the request failed in a way a retry may not)."""
        table = self._table
        with transaction(self.tenant_id) as session:
            session.execute(delete(table).where(*self._where(), table.c.status_code.is_(None)))


def claim(
    session: Session,
    *,
    tenant_id: uuid.UUID | None,
    key: str,
    request_fingerprint: str,
    now: datetime | None = None,
) -> Claim:
    """Claim `key` for this request in the session's transaction, or raise what answers it:
    the stored response (`StoredResponse`), 409 while the first runs, 422 for another request.

    `tenant_id` None: the platform admin's key space. The session is bound to `tenant_id`.
    """
    if not _VALID_KEY.fullmatch(key):
        raise InvalidIdempotencyKey()
    now = now or utcnow()
    key_hash = hashlib.sha256(key.encode()).hexdigest()
    table = _ADMIN if tenant_id is None else _TENANT
    lock_name = f"idempotency:{tenant_id or 'admin'}:{key_hash}"
    if not session.scalar(
        select(func.pg_try_advisory_xact_lock(func.hashtextextended(lock_name, 0)))
    ):
        raise IdempotencyKeyInUse()
    row: dict[str, Any] = {
        "id": new_id(),
        "key_hash": key_hash,
        "fingerprint": request_fingerprint,
        "created_at": now,
        "updated_at": now,
    }
    conflict = ["key_hash"]
    if tenant_id is not None:
        row["tenant_id"] = tenant_id
        conflict = ["tenant_id", "key_hash"]
    # A key past its lifetime that the worker has not pruned yet is taken over like a new one.
    insert = pg_insert(table).values(**row)
    statement = insert.on_conflict_do_update(
        index_elements=conflict,
        set_={
            "fingerprint": insert.excluded.fingerprint,
            "status_code": None,
            "response_headers": None,
            "response_body": None,
            "created_at": insert.excluded.created_at,
            "updated_at": insert.excluded.updated_at,
        },
        where=table.c.created_at < now - KEY_LIFETIME,
    ).returning(table.c.id)
    result = Claim(tenant_id, key_hash, request_fingerprint)
    if session.execute(statement).first() is not None:
        return result
    stored = session.execute(
        select(
            table.c.fingerprint,
            table.c.status_code,
            table.c.response_headers,
            table.c.response_body,
        ).where(*result._where())
    ).one()
    if stored.fingerprint != request_fingerprint:
        raise IdempotencyKeyReused()
    if stored.status_code is None:
        raise IdempotencyKeyInUse()
    raise StoredResponse(
        stored.status_code,
        [(name, value) for name, value in stored.response_headers or []],
        crypto.decrypt_bytes(stored.response_body or b""),
    )


def prune_expired(now: datetime | None = None) -> int:
    """Delete every key past its lifetime, of every tenant and the admin's (the worker)."""
    cutoff = (now or utcnow()) - KEY_LIFETIME
    with transaction() as session, system_scope(session):
        pruned = 0
        for table in (_TENANT, _ADMIN):
            result = session.execute(delete(table).where(table.c.created_at < cutoff))
            pruned += result.rowcount  # type: ignore[attr-defined]
    return pruned
