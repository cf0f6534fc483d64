"""Clients and browser helpers that let tests talk to a real server over real sockets."""
