"""Development tools that run the platform from the checkout, without Docker (``make dev``)."""
