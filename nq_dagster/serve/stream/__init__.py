"""Tick streams from a message broker into the serving engine (`nq serve --stream nats://...`)."""
