"""The multiplayer todo list again, on Datastar's browser client: ``gateway serve --app gateway.demo.datastar:app``.

The same commands at the same paths with the same validation, the same store and the same HTML as the first demo
(``gateway.demo.app``); what differs is the page. It has no JavaScript of its own: Datastar (fetched at install
time, ``gateway.demo.fetch_datastar``) opens the view and morphs each ``datastar-patch-elements`` event into the
page, and posts commands with the page's signals as the JSON body. So every command is registered with
``extra="ignore"``: each reads the signals it declares (``text`` or ``id``) and ignores the others, where the first
demo's commands refuse unknown members with 422.

The view returns one ``PatchElements`` of ``<div id="todos">`` (the element Datastar replaces by its id), rendered
once per version for every subscriber and compressed per connection, as any view.
"""

from __future__ import annotations

from pathlib import Path

from quart import Response

from gateway.api import Gateway
from gateway.datastar import PatchElements
from gateway.demo import fetch_datastar
from gateway.demo.app import no_cache, todo_commands
from gateway.demo.render import render_todos
from gateway.demo.store import Todos

__all__ = ["app", "create_app", "render_view"]

STATIC = Path(__file__).parent / "datastar_static"
STYLES = Path(__file__).parent / "static"
"""The first demo's stylesheet fits this page too (the same ids and structure): one look, kept in one file."""



def render_view(html: str) -> PatchElements:
    """The patch that replaces the page's list with ``html`` (the first demo's rendering, unchanged)."""
    return PatchElements(f'<div id="todos">\n{html}\n</div>')


def _require_client() -> None:
    """Refuse to start without the pinned client: the page would load, then never connect, saying nothing."""
    if not fetch_datastar.client_is_current():
        raise RuntimeError(
            f"the Datastar client is missing or not the pinned build at {fetch_datastar.TARGET}: "
            "run `make install` (or `python gateway/demo/fetch_datastar.py`)"
        )


def create_app(store: Todos | None = None) -> Gateway:
    """The Datastar demo on ``store``, or, by default, on the store its bus calls for (``todos_for``), opened
    when the gateway starts and closed when it stops; a ``store`` given here stays its owner's to close."""
    gw = Gateway(static_folder=str(STATIC), name="gateway.demo.datastar")
    current = todo_commands(gw, store, extra="ignore")  # the first demo's commands, ignoring other signals

    @gw.on_startup
    async def client_present() -> None:
        _require_client()

    @gw.route("/")
    async def index() -> Response:
        return await no_cache(STATIC, "index.html")

    @gw.route("/datastar.js")
    async def client() -> Response:
        # Revalidated rather than cached for good: a new pin changes the file under the same URL.
        return await no_cache(fetch_datastar.TARGET.parent, fetch_datastar.TARGET.name)

    @gw.route("/style.css")
    async def style() -> Response:
        return await no_cache(STYLES, "style.css")

    @gw.view("/todos/updates", topics=["todos"])
    async def updates() -> PatchElements:
        return render_view(render_todos(await current().snapshot()))

    return gw


app = create_app()
