"""An HTTP/2 + HTTP/3 Server-Sent-Events gateway: stateless commands in, persistent compressed queries out."""

from gateway.api import Gateway
from gateway.config import Settings

__all__ = ["Gateway", "Settings"]
__version__ = "0.1.0"
