"""Language-model completions: routed by public model name to provider deployments, retried,
failed over, streamed as deltas, and priced on every call."""
