"""Every message on the Soma bus, declared once, typed and versioned.

This package imports nothing else of the project, so any process (a handler, the gateway, a
script) can depend on it without pulling in the rest.
"""

from schemas.catalogue import CATALOGUE, MessageType, by_name, by_subject, of_type
from schemas.envelope import Envelope, new_id

__all__ = ["CATALOGUE", "Envelope", "MessageType", "by_name", "by_subject", "new_id", "of_type"]
