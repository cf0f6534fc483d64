"""The sans-IO core: pure data in, bytes or decisions out.

Nothing under this package may import asyncio, Quart, Hypercorn or a broker client (a test enforces it), so
every rule of the wire format, of compression and of backpressure can be tested without a socket and reused by
any I/O layer, including the benchmark's load generator.
"""
