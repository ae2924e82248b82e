"""The HTTP gateway: authenticate, limit, validate, publish a command or start a saga, and return
or stream the outcome. It talks to handlers only through bus messages."""
