"""The one error memory raises for requests that can never succeed."""


class InvalidMemory(ValueError):
    """No tenant, empty text, an over-long field, an unfilterable metadata value."""
