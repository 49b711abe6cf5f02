"""The registry of explanation methods by name (``medxai.explain.REGISTRY``).

``@REGISTRY.register("name", *aliases)`` is the one place a method's name is written: it also
sets the class's ``name`` attribute to the first name.
"""

from __future__ import annotations

from collections.abc import Callable

from medxai._util.registry import Registry


class MethodRegistry(Registry[type]):
    """A ``Registry`` of explainer classes whose decorator also sets ``cls.name`` (first name)."""

    def register(self, *names: str) -> Callable[[type], type]:
        deco = super().register(*names)

        def named(cls: type) -> type:
            cls = deco(cls)
            cls.name = names[0] if names else cls.__name__  # type: ignore[attr-defined]
            return cls

        return named


REGISTRY: MethodRegistry = MethodRegistry("explanation method")
