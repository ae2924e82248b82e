"""Memory: semantic recall on Qdrant and ordered conversation history in SQL, per tenant.

Every vector query is built by one filter function that always carries the tenant, so no
code path can read, return or delete another tenant's memories.
"""
