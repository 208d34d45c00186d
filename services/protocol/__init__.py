"""Wire models shared by the queue manager and the worker (decision 1 in docs/decisions.md: HTTP only)."""
