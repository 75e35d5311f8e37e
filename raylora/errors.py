"""User-facing errors: each carries where the mistake is (a dotted spec path or ``file:line``).

The CLI turns any :class:`UserError` into one line per problem on stderr and exit code 2, with no
traceback; an :class:`EnvironmentFault` into one line and exit code 1. Everything else is a bug and exits 1.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; ``where`` names the YAML path or ``file:line``."""

    def __init__(self, where: str, message: str):
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}" if where else message)

    def __reduce__(self):  # pickle by the constructor's arguments, so the error crosses processes whole
        return type(self), (self.where, self.message)

    def lines(self) -> list[str]:
        """The one-line messages to print."""
        return [str(self)]


class SpecError(UserError):
    """A problem in the study spec, at a dotted path such as ``training.lora.r``."""


class DataError(UserError):
    """A problem in a dataset, at ``file.jsonl:LINE`` (or ``file.parquet:ROW``)."""


class NothingToDo(UserError):
    """A request that finds nothing to act on (no experiment, no finished trial)."""


class UserErrors(UserError):
    """Several user errors reported together (``raylora validate`` shows them all at once)."""

    def __init__(self, errors: list[UserError]):
        self.errors = errors
        super().__init__("", "; ".join(str(e) for e in errors))

    def __reduce__(self):
        return type(self), (self.errors,)

    def lines(self) -> list[str]:
        return [line for e in self.errors for line in e.lines()]


class EnvironmentFault(Exception):
    """Not the user's mistake and not a bug: the machine or a service cannot do what is asked (Ray's node
    did not start, storage is full or read-only). The CLI prints one line and exits 1; nothing is lost."""

    def __init__(self, where: str, message: str):
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}" if where else message)


class TrialError(RuntimeError):
    """A trial that cannot go on for a reason worth telling the user (not a bug in raylora)."""


def raise_all(errors: list[UserError]) -> None:
    """Raise nothing, the one error, or all of them together."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise UserErrors(errors)


def first_line(error: BaseException, limit: int = 500) -> str:
    """The line of an exception's message worth showing (Ray's remote tracebacks end in the error)."""
    text = str(error).strip() or type(error).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if len(lines) > 1 and "Traceback" in text else lines[0])[:limit]
