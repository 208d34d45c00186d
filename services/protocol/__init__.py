"""Wire models shared by the queue manager and the worker (decision 1: workers speak only HTTP)."""
