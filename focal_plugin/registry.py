"""Registration that survives re-imports.

fvcore's ``Registry`` refuses a name registered twice, so ``importlib.reload(focal_plugin)`` or
importing our modules under a second path would fail with "already registered". Here a name may
be registered again by an object of the same qualified name (a re-import of the same code); a
different object under a taken name is still an error.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from fvcore.common.registry import Registry

T = TypeVar("T")


def register(registry: Registry, name: str | None = None) -> Callable[[T], T]:
    """Decorator: ``@register(META_ARCH_REGISTRY)`` or ``@register(LOSS_REGISTRY, "sigmoid_ce")``."""

    def deco(obj: T) -> T:
        key = name or obj.__name__  # type: ignore[attr-defined]
        existing: Any = registry._obj_map.get(key)  # fvcore exposes no public replace
        if existing is not None and existing is not obj:
            same_code = getattr(existing, "__qualname__", None) == getattr(
                obj, "__qualname__", None
            ) and str(getattr(existing, "__module__", "")).split(".")[-1] == str(
                getattr(obj, "__module__", "")
            ).split(".")[-1]
            if not same_code:
                raise KeyError(
                    f"'{key}' is already registered in registry '{registry._name}' by "
                    f"{existing!r}; refusing to replace it with {obj!r}"
                )
        registry._obj_map[key] = obj
        return obj

    return deco
