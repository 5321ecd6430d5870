"""Serve the review page with uvicorn on 127.0.0.1 (a free port by default)."""

from __future__ import annotations

import contextlib
import gc
import getpass
import ipaddress
import logging
import socket
import threading
import webbrowser
from pathlib import Path

import uvicorn

from histocore.io import one_line, path_shown
from histocore.manifest import Manifest
from histofetch.review.app import RunState, app_for
from histofetch.review.data import Scores, review_folder

log = logging.getLogger(__name__)


def default_reviewer() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (containers)
        return "reviewer"


def allowed_hosts(host: str) -> tuple[str, ...]:
    """The Host header values the page answers when bound to ``host``: this machine's
    names and ``host`` as a browser's request names it. Starlette compares the header's
    host lower-cased and keeps an IPv6 address's brackets (``[::1]``): ``--host ::1``
    allowed only ``::1``, so every request was ``Invalid host header`` (400)."""
    name = bound_host(host).lower()
    names = [name]
    # the browser asks for the address as url_of prints it: its short form (a name: as is)
    with contextlib.suppress(ValueError):
        names.append(ipaddress.ip_address(name).compressed)
    names += [f"[{n}]" for n in names if ":" in n]
    return ("127.0.0.1", "localhost", *dict.fromkeys(names))


def bound_host(host: str) -> str:
    """``host`` as the socket binds it: an IPv6 address given in brackets as a URL writes it
    (``[::1]``) without them (binding ``[::1]`` failed: ``Name or service not known``)."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


class ReviewServer(uvicorn.Server):
    """The uvicorn server of one run's review page (``run_dir``: the run folder).

    ``freeze_gc`` (set by :func:`serve`, the CLI's server; off for a library caller): while
    it serves, each run read is frozen out of the cyclic garbage collector's way
    (:meth:`RunState.settle`). :func:`gc.freeze` is process-wide, so a caller serving from a
    thread of their own would have their objects frozen too (and a freeze of their own
    undone when it stops): it is theirs to turn on."""

    def __init__(self, config: uvicorn.Config, run_dir: Path, state: RunState) -> None:
        super().__init__(config)
        self.run_dir, self.state = run_dir, state
        self.freeze_gc = False

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve until stopped (:meth:`before_serving`, uvicorn's loop, then
        :meth:`after_serving`)."""
        freezes = self.before_serving()
        try:
            super().run(sockets=sockets)
        finally:
            self.after_serving(freezes)

    def before_serving(self) -> bool:
        """What :meth:`run` does before it serves (a benchmark of the start-up calls it
        too): with ``freeze_gc``, the run read is settled (:meth:`RunState.settle`), and
        so is each read after it. Returns whether it froze (for :meth:`after_serving`)."""
        freezes = self.freeze_gc
        if freezes:
            self.state.settles = True
            self.state.settle()
        return freezes

    def after_serving(self, froze: bool) -> None:
        """What :meth:`run` does when it stops: the run's store is closed and, when
        :meth:`before_serving` ``froze``, the objects frozen are the collector's again and
        collected (the connection of a run read earlier is one only the collector closes)."""
        self.state.settles = False
        self.state.close()
        if froze:
            gc.unfreeze()
            gc.collect()


def build_server(
    run_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    reviewer: str | None = None,
    scores: Path | None = None,
    freeze_gc: bool = False,
) -> tuple[ReviewServer, socket.socket]:
    """A configured server and its bound socket (so port 0 gives a known free port);
    ``freeze_gc``: :attr:`ReviewServer.freeze_gc` (:func:`serve`'s, the CLI's).

    Raises :class:`histofetch.review.data.ReviewError` for a bad run or scores folder.
    The folder is found, the run and the scores read, once: the first page uses them (each
    was read again by the app, the folder looked up 3 to 4 times).
    """
    run_dir = review_folder(run_dir)  # RUN/manifest.jsonl stands for RUN, as for Manifest.load
    read = Scores.load(scores) if scores is not None else None
    hosts = allowed_hosts(host)
    app = app_for(run_dir, read, reviewer=reviewer or default_reviewer(), hosts=hosts)
    state: RunState = app.state.run
    state.manifest()  # fail now, with one line, rather than on the first page view
    bind = bound_host(host)
    sock = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((bind, port))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = ReviewServer(config, run_dir, state)
    server.freeze_gc = freeze_gc
    return server, sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/"


def serve(
    run_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    reviewer: str | None = None,
    scores: Path | None = None,
    open_browser: bool = True,
    announce=print,
) -> None:
    """Run the review page until Ctrl-C."""
    server, sock = build_server(  # the CLI's process: no caller's objects to freeze
        run_dir, host=host, port=port, reviewer=reviewer, scores=scores, freeze_gc=True
    )
    run_dir = server.run_dir  # the folder is announced, its export refreshed
    url = url_of(sock)
    shown = path_shown(Path(run_dir))  # a folder named '~' as ./~/run, not $HOME's
    # escaped: a run folder named with a newline or an escape broke the line (one_line)
    announce(
        one_line(f"review page for {shown}: {url}  (Ctrl-C to stop; every answer is saved at once)")
    )
    if open_browser:
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    try:
        server.run(sockets=[sock])
    finally:  # the answers are in the store already; refresh the JSONL export once
        with Manifest.load(run_dir) as manifest:
            manifest.export()
