"""Reading the portal's forms: text fields, lists of checkboxes, comma-separated lists."""

from __future__ import annotations

from starlette.datastructures import FormData

__all__ = ["checked", "field", "listed"]


def field(form: FormData, name: str) -> str:
    """A text field, stripped; ``""`` when missing (or a file)."""
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def checked(form: FormData, name: str) -> list[str]:
    """Every value of a repeated field (checkboxes), stripped, empty ones left out."""
    return [v.strip() for v in form.getlist(name) if isinstance(v, str) and v.strip()]


def listed(form: FormData, name: str) -> list[str]:
    """A comma- or space-separated list in one text field."""
    return [part for part in field(form, name).replace(",", " ").split() if part]
