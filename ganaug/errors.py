"""User-facing errors: the CLI prints their message on one line and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (flag, key, file, URI), not a bug in ganaug."""


def first_line(exc: BaseException, limit: int | None = None, with_type: bool = False) -> str:
    """The first line of an exception's message (its class name when it has none), cut to
    `limit` characters: what a one-line error shows of a library's multi-line text.
    `with_type` puts the class name in front ("ValueError: ..."), for errors that are bugs."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if with_type or not line:
        line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."


def require(cond: bool, msg: str, error: type[UserError] = UserError) -> None:
    """Raise `error(msg)` unless `cond`: the one-line input checks of the orchestrators."""
    if not cond:
        raise error(msg)


def find_user_error(exc: BaseException) -> UserError | None:
    """The UserError raised inside a Ray task/actor, out of Ray's wrappers; None if there is none.

    Walks `.cause` (where RayTaskError keeps the original exception), `__cause__` and
    `__context__`. Ray's wrapper classes subclass the user's exception class too, so a UserError
    counts only when it is the `.cause` of something or its class comes from ganaug itself.
    """
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(cause, UserError):
            return cause
        if isinstance(e, UserError) and type(e).__module__.startswith("ganaug"):
            return e
        todo += [cause, e.__cause__, e.__context__]
    return None
