"""common.transient.retry: how long it keeps retrying."""

from __future__ import annotations

import time

import pytest
from django.db import OperationalError, connection, transaction

from common import transient


def test_a_call_frozen_past_the_budget_still_gets_its_retries() -> None:
    """A worker stopped (SIGSTOP, a paused VM) in the middle of a write wakes to a connection
    the database dropped. The budget counts from that first failure, so it retries, learns
    whether it still owns its job, and does not give up as if the database were gone."""
    calls = []

    def write() -> str:
        calls.append(time.monotonic())
        if len(calls) == 1:
            time.sleep(0.3)  # frozen longer than the whole budget...
            raise OperationalError("server closed the connection unexpectedly")  # ...woke to this
        return "written"

    assert transient.retry(write, what="a write", budget=0.6) == "written"
    assert len(calls) == 2


def test_a_database_that_stays_away_past_the_budget_fails_the_call() -> None:
    calls = []

    def write() -> str:
        calls.append(time.monotonic())
        raise OperationalError("connection refused")

    with pytest.raises(OperationalError):
        transient.retry(write, what="a write", budget=0.6)
    # Backoff 0.5 s: the first retry fits in the budget, the second (after 1 s more) would not.
    assert len(calls) == 2


@pytest.mark.django_db(transaction=True)
def test_a_session_postgresql_ended_for_idling_in_a_transaction_is_retried() -> None:
    """The zombie worker's fault, for real: frozen inside a transaction past PostgreSQL's
    idle_in_transaction_session_timeout, it wakes to a session the server ended. psycopg names
    that an InternalError; it is a lost connection all the same, so the write is retried on a
    new one (where the worker's fence then tells it whether it still owns its job)."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (idle_in_transaction_session_timeout)")
    calls = []

    def write() -> int:
        calls.append(time.monotonic())
        with transaction.atomic(), connection.cursor() as cursor:
            if len(calls) == 1:
                cursor.execute("SET LOCAL idle_in_transaction_session_timeout = '100ms'")
                time.sleep(0.5)  # frozen mid-transaction; the server ends the session
            cursor.execute("SELECT 1")
            return int(cursor.fetchone()[0])

    assert transient.retry(write, what="a write", budget=5) == 1
    assert len(calls) == 2
