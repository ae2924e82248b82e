"""The operator console: the bus, the sagas and the dead letters, live in a browser.

It runs as its own process (``soma run console``, started by ``soma up`` after the gateway)
rather than inside the gateway, because what it does is not what the gateway does:

- it reads every stream of the bus, every tenant's, through ordered ephemeral consumers, and
  replays dead letters — rights the API process should not hold (least privilege: the gateway's
  NATS user publishes commands and reads replies, nothing more);
- a live tail of a busy system is steady work; in its own process it never slows a chat turn,
  and a deployment that does not want a console simply does not run it;
- it is a client like any other: who is signed in is asked of the gateway's own API
  (``GET /v1/auth/whoami``), and whatever the API offers (tasks, usage, keys, tenants) is done
  through the API with the operator's own credential, so the API's authorization decides. What
  only the bus holds (the streams, a request's story, saga queries, dead letters) is read over
  the bus, within the signed-in tenant unless the role is ``operator``.

It imports the schemas, the bus and the kernel, never a handler, the saga engine or the gateway.
"""
