"""One name -> object registry for every pluggable part (ARCHITECTURE.md §1, "Registries").

GAN families, adversarial losses, augment policies, source transforms, batch sources, label
plans, metrics, feature extractors and generation filters are all a `Registry`, so an unknown
name is the same one-line `UnknownNameError` everywhere:

    unknown loss 'wgan' (did you mean 'wgan-gp'?); choose from ns, hinge, lsgan, wgan-gp

An entry may be lazy (`register_lazy(name, "module:attr")`): its name is listed at once but its
module is imported on the first `get`. That is how config.py checks a name against a registry
whose objects need torch without importing torch. No torch or Ray import here.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

from ganaug.errors import UserError

T = TypeVar("T")


class UnknownNameError(UserError, LookupError):
    """A name that no registry entry has; the message lists the registered names."""


class _Lazy:
    """A registry entry not imported yet: 'package.module:attribute'."""

    def __init__(self, target: str):
        module, _, attr = target.partition(":")
        if not module or not attr:
            raise ValueError(f"lazy registry entry {target!r}: expected 'package.module:attribute'")
        self.module, self.attr = module, attr

    def load(self) -> Any:
        return getattr(importlib.import_module(self.module), self.attr)


class Registry(Generic[T]):
    """Named entries of one kind (`what`, e.g. "GAN family"), in registration order.

    `loader` runs once before the first lookup or listing: it imports plugin modules whose
    import registers entries (e.g. generation filters that live in ganaug/metrics/).
    """

    def __init__(self, what: str, *, loader: Callable[[], None] | None = None):
        self.what = what
        self._entries: dict[str, T | _Lazy] = {}
        self._loader = loader

    def _load(self) -> None:
        if self._loader is not None:
            loader, self._loader = self._loader, None  # once, even if it registers more
            loader()

    # ------------------------------------------------------------------ registration
    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name: str, obj: Any = None) -> Any:
        """`reg.register("x", obj)`, or `@reg.register("x")` above a function or class."""
        if obj is None:
            return lambda o: self.register(name, o)
        self._add(name, obj)
        return obj

    def register_lazy(self, name: str, target: str) -> None:
        """List `name` now; import 'module:attr' on its first `get` (keeps the module unloaded)."""
        self._add(name, _Lazy(target))

    def _add(self, name: str, entry: T | _Lazy) -> None:
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.what} name must be a non-empty string, got {name!r}")
        if name in self._entries:  # two plugins claiming one name is a bug, not a choice
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = entry

    # ------------------------------------------------------------------ lookup
    def get(self, name: str, context: str = "") -> T:
        """The entry `name`; else UnknownNameError, prefixed by `context` (e.g. "--filter x")."""
        self._load()
        if name not in self._entries:
            raise self.unknown(name, context)
        entry = self._entries[name]
        if isinstance(entry, _Lazy):
            entry = self._entries[name] = entry.load()
        return entry

    def check(self, names: list[str] | tuple[str, ...], context: str = "") -> None:
        """Raise UnknownNameError for the first of `names` that is not registered."""
        for name in names:
            if name not in self:
                raise self.unknown(name, context)

    def unknown(self, name: Any, context: str = "") -> UnknownNameError:
        """The uniform error for `name`; config.py reuses its text inside a ConfigError."""
        return UnknownNameError(self.unknown_message(name, context))

    def unknown_message(self, name: Any, context: str = "") -> str:
        names = self.names()
        close = difflib.get_close_matches(str(name), names, n=1) if isinstance(name, str) else []
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        choices = ", ".join(names) or "none are registered"
        prefix = f"{context}: " if context else ""
        return f"{prefix}unknown {self.what} {name!r}{hint}; choose from {choices}"

    def names(self) -> list[str]:
        """Registered names in registration order (lazy entries included, not imported)."""
        self._load()
        return list(self._entries)

    def copy(self) -> Registry[T]:
        """An independent registry with the same entries (tests add entries to a copy)."""
        self._load()
        out: Registry[T] = Registry(self.what)
        out._entries = dict(self._entries)
        return out

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"
