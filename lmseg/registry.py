"""A small registry of named builders, one per block family (as timm's ``register_model``).

Each family (vision-language encoders, spatial encoders, fusions, class attention) keeps a
:class:`Registry` beside its blocks. A config section names a builder and its options,
``{"type": "sam", "variant": "vit_b", "image_size": 1024}``; :meth:`Registry.build` checks the
options against the builder's keyword parameters before calling it, so a misspelt or foreign
option is one clear error, not a ``TypeError`` deep inside a constructor.

Users add their own builders without editing lmseg::

    from lmseg.encoders import SPATIAL_ENCODERS

    @SPATIAL_ENCODERS.register("my_encoder")
    def build_my_encoder(*, width: int = 256, weights: str | None = None) -> MyEncoder:
        ...
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Builder = Callable[..., T]


class RegistryError(ValueError):
    """An unknown type name or an option its builder does not take."""


class Registry(Generic[T]):
    """Named builders of one block family.

    Args:
        family: what the builders build, for messages (``"spatial encoder"``).
        context: keyword arguments the model factory passes to every builder besides the config
            options (sizes known only at build time, weights sources); they may not appear in a
            config section.
    """

    def __init__(self, family: str, *, context: tuple[str, ...] = ()) -> None:
        self.family = family
        self.context = tuple(context)
        self._builders: dict[str, Builder[T]] = {}

    def register(
        self, name: str, builder: Builder[T] | None = None, *, overwrite: bool = False
    ) -> Any:
        """Register ``builder`` under ``name``; usable as a decorator (``@REG.register("x")``).

        Args:
            name: the ``type`` that config sections use.
            builder: a callable taking keyword-only options (and the family's context keywords).
            overwrite: replace an existing builder of that name instead of raising.
        """

        def add(fn: Builder[T]) -> Builder[T]:
            if not name or not isinstance(name, str):
                raise RegistryError(f"a {self.family} needs a non-empty string name")
            if name in self._builders and not overwrite and self._builders[name] is not fn:
                raise RegistryError(
                    f"a {self.family} named {name!r} is already registered; "
                    "pass overwrite=True to replace it"
                )
            self._builders[name] = fn
            return fn

        return add if builder is None else add(builder)

    def unregister(self, name: str) -> None:
        """Remove a builder (tests and notebooks that register temporary ones)."""
        self._builders.pop(name, None)

    def names(self) -> list[str]:
        """The registered type names, in registration order."""
        return list(self._builders)

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self._builders)

    def get(self, name: str) -> Builder[T]:
        """The builder of ``name``; raises :class:`RegistryError` naming the known ones."""
        if name not in self._builders:
            raise RegistryError(
                f"unknown {self.family} type {name!r}; registered: {', '.join(self._builders)}"
            )
        return self._builders[name]

    def options(self, name: str) -> dict[str, Any]:
        """The config options of a builder and their defaults (``inspect.Parameter.empty`` when
        required), context keywords excluded."""
        params = inspect.signature(self.get(name)).parameters
        return {
            key: p.default
            for key, p in params.items()
            if key not in self.context and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        }

    def check(self, section: Mapping[str, Any], where: str) -> None:
        """Check a config section ``{"type": ..., **options}`` without building anything.

        Raises:
            RegistryError: no or unknown ``type``, an unknown option, a missing required one, or
                a context keyword given as an option; each named, with ``where`` (the section).
        """
        if not isinstance(section, Mapping):
            raise RegistryError(f"{where} must be a mapping with a 'type', got {type(section).__name__}")
        name = section.get("type")
        if not isinstance(name, str):
            raise RegistryError(f"{where} needs a 'type' naming a {self.family}")
        known = self.options(name)
        given = {k for k in section if k != "type"}
        reserved = sorted(given & set(self.context))
        if reserved:
            raise RegistryError(f"{where}: {reserved} cannot be set in a config")
        unknown = sorted(given - set(known))
        if unknown:
            raise RegistryError(
                f"{where}: unknown option(s) {unknown} for {self.family} {name!r}; "
                f"it takes {sorted(known)}"
            )
        missing = sorted(k for k, d in known.items() if d is inspect.Parameter.empty and k not in given)
        if missing:
            raise RegistryError(f"{where}: {self.family} {name!r} needs option(s) {missing}")

    def build(self, section: Mapping[str, Any], where: str | None = None, **context: Any) -> T:
        """Build the block a config section describes.

        Args:
            section: ``{"type": name, **options}``.
            where: the section's name for messages (default: the family).
            **context: the family's context keywords (only those the builder accepts are passed).
        """
        self.check(section, where or self.family)
        builder = self.get(section["type"])
        params = inspect.signature(builder).parameters
        extra = {k: v for k, v in context.items() if k in params}
        return builder(**{k: v for k, v in section.items() if k != "type"}, **extra)
