"""The I/O layer: the only code that knows ASGI, Quart and Hypercorn."""
