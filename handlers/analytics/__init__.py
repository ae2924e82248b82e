"""analytics: usage, cost and latency per tenant, model, saga type, user and day."""
