"""``@register(REGISTRY)``: detectron2's ``@REGISTRY.register()``, safe to re-import.

A name taken by a different object is an error naming both objects' modules and files, as with
detectron2's registries (which raise without saying where the first one came from). The one
exception: re-executing the very same source (same module name and file, as
``importlib.reload`` does) replaces the entry instead of failing with "already registered".
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

from fvcore.common.registry import Registry

T = TypeVar("T")


def _source(obj: Any) -> tuple[str, str]:
    module = getattr(obj, "__module__", "?")
    try:
        path = inspect.getfile(obj)
    except (TypeError, OSError):
        path = "?"
    return module, path


def register(registry: Registry, name: str | None = None) -> Callable[[T], T]:
    """Decorator: ``@register(META_ARCH_REGISTRY)`` or ``@register(LOSS_REGISTRY, "sigmoid_ce")``.

    Raises ``KeyError`` when ``name`` (default: the object's ``__name__``) is registered by an
    object from another module or file.
    """

    def deco(obj: T) -> T:
        key = name or obj.__name__  # type: ignore[attr-defined]
        existing: Any = registry.get(key) if key in registry else None
        if existing is not None and existing is not obj:
            if _source(existing) != _source(obj):
                (m1, f1), (m2, f2) = _source(existing), _source(obj)
                raise KeyError(
                    f"'{key}' is already registered in detectron2's registry '{registry._name}' by "
                    f"{m1}.{getattr(existing, '__qualname__', key)} ({f1}); {m2} ({f2}) cannot "
                    f"register another object under that name. Rename one of them."
                )
            del registry._obj_map[key]  # a reload of the same source: fvcore has no public replace
        registry._do_register(key, obj)
        return obj

    return deco
