"""The multiplayer todo-list demo."""

from gateway.demo.app import app, create_app

__all__ = ["app", "create_app"]
