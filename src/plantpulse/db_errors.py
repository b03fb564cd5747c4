"""What a database failure means: an outage to wait out, or an error to report.

One classification for every caller: the ingest writer retries an outage on a fresh connection
for as long as it takes and isolates anything else; the API answers an outage with 503 and
`Retry-After`, and anything else with a precise error. Guessing "unavailable" for every error
is how a data error becomes a request that clients retry forever.

asyncpg raises more than `PostgresError` for a broken connection: `InterfaceError` (and its
`ConnectionDoesNotExistError`), `InternalClientError` ("cannot switch to state 15; another
operation is in progress" after a backend was terminated mid-COPY), plain `OSError`s and
timeouts. SQLAlchemy wraps all of these in its `DBAPIError` family; we look through it.
"""

from __future__ import annotations

from typing import Literal

import asyncpg
import sqlalchemy.exc

Kind = Literal["transient", "permanent"]

# Exceptions that mean "the database (or our connection to it) is not usable right now".
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionError, refused, reset, unreachable
    TimeoutError,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.InterfaceError,  # the connection is closed or in an unusable state
    asyncpg.InternalClientError,  # protocol state broken by a connection lost mid-operation
    asyncpg.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.AdminShutdownError,  # 57P01: pg_terminate_backend, shutdown
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.TooManyConnectionsError,  # 53300
    # Deadlock or serialization failure: the transaction rolled back and can simply be retried.
    asyncpg.TransactionRollbackError,
)

# Subclasses of asyncpg's InterfaceError that are no outage: a feature the client or server
# lacks; and (below) the ones that are also ValueErrors: a malformed DSN or connection option
# (ClientConfigurationError), a value the driver cannot encode (its own DataError). The same
# call fails the same way on any connection.
_PERMANENT_CLIENT: tuple[type[BaseException], ...] = (
    asyncpg.UnsupportedClientFeatureError,
    asyncpg.UnsupportedServerFeatureError,
)

# SQLSTATEs of transient failures that asyncpg reports through a broader class.
_TRANSIENT_SQLSTATES = frozenset(
    {
        "25006",  # read_only_sql_transaction: a standby, e.g. the old primary mid-failover
        "53100",  # disk_full: nothing can be written until space is freed; then it works again
        "53200",  # out_of_memory
        "55000",  # object_not_in_prerequisite_state: "database is not accepting connections"
        "57000",  # operator_intervention
        "57P04",  # database_dropped
        "58000",  # system_error (I/O)
        "58030",  # io_error
    }
)
# ...but 55000 is also raised for deterministic misuse; only this text marks an outage.
_NOT_ACCEPTING = "not currently accepting connections"


def unwrap(exc: BaseException) -> BaseException:
    """The driver's exception behind SQLAlchemy's wrapper (or `exc` itself)."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        orig = exc.orig
        # asyncpg's SQLAlchemy dialect adapts the driver error; the original is its cause.
        cause = getattr(orig, "__cause__", None)
        if isinstance(cause, BaseException):
            return cause
        if isinstance(orig, BaseException):
            return orig
    return exc


def classify(exc: BaseException) -> Kind:
    """`transient` for an outage or a broken connection (retry later, on a new connection),
    `permanent` for everything else (the same request will fail the same way)."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return "transient"
    if isinstance(exc, sqlalchemy.exc.TimeoutError | sqlalchemy.exc.DisconnectionError):
        return "transient"  # the pool had no connection to give, or lost one
    inner = unwrap(exc)
    if isinstance(inner, _PERMANENT_CLIENT) or (
        isinstance(inner, asyncpg.InterfaceError) and isinstance(inner, ValueError)
    ):
        return "permanent"
    if isinstance(inner, asyncpg.ObjectNotInPrerequisiteStateError):
        return "transient" if _NOT_ACCEPTING in str(inner) else "permanent"
    if isinstance(inner, _TRANSIENT):
        return "transient"
    if sqlstate(inner) in _TRANSIENT_SQLSTATES:
        return "transient"
    return "permanent"


def sqlstate(exc: BaseException) -> str | None:
    """The five-character SQLSTATE of a PostgreSQL error (through SQLAlchemy's wrapper)."""
    code = getattr(unwrap(exc), "sqlstate", None)
    return code if isinstance(code, str) else None


def is_unique_violation(exc: BaseException) -> bool:
    """A unique key refused the row (SQLSTATE 23505), as opposed to any other IntegrityError
    (a CHECK, NOT NULL or foreign key), which must not be reported as "already exists"."""
    return sqlstate(exc) == "23505"


def is_transient(exc: BaseException) -> bool:
    return classify(exc) == "transient"


def is_database_error(exc: BaseException) -> bool:
    """Anything the database, its driver or the connection to it can raise."""
    return (
        isinstance(
            unwrap(exc),
            asyncpg.PostgresError | asyncpg.InterfaceError | asyncpg.InternalClientError,
        )
        or isinstance(exc, sqlalchemy.exc.SQLAlchemyError)
        or isinstance(exc, OSError | TimeoutError)
    )
