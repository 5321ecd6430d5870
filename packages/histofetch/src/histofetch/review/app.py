"""The review page: a Starlette app (Jinja2 templates, plain JS, local assets only).

Routes: ``/`` (the page), ``/api/items`` (one page of the filtered list + progress:
``offset``, ``limit``, or ``around`` a figure id, or the figure ``after`` or ``before`` one),
``/api/item/{id}`` (one figure), ``POST
/api/label`` (save one answer), ``/api/alive`` (the page's heartbeat), ``/image/{id}`` and
``/heatmap/{id}`` (the figure file and its eval heatmap), ``/static/…``. Nothing is fetched
from outside: no CDN, no fonts, no analytics. Every value from the manifest reaches the page escaped
(Jinja2 autoescape, ``textContent`` in JS); the caption's highlight markup is built on the
server from escaped pieces (:func:`histofetch.review.data.caption_html`).
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from histocore.io import NotJSON, loads_json, one_line
from histocore.manifest import MANIFEST_NAME, Image, Manifest, ManifestError, Record
from histofetch.review.data import (
    ReviewError,
    Scores,
    item,
    load_folder,
    ordered,
    progress,
    review_folder,
    reviewable_records,
    save_answer,
    select,
)

HERE = Path(__file__).parent
#: The most bytes a POST body may hold (an answer is an id, a label and a reviewer name).
MAX_BODY = 64 * 1024
#: Figures in one page of ``/api/items`` unless ``limit`` says (at most :data:`MAX_PAGE`):
#: the page asks for the figures around the one shown, never the whole list (6 MB of JSON
#: for 100,000 figures).
PAGE = 200
MAX_PAGE = 5000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".tif", ".tiff", ".bmp")
#: Security headers on every response: no framing, no sniffing, only our own scripts.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class SecurityHeaders:
    """ASGI middleware: :data:`HEADERS` on every HTTP response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [
                    (k.lower().encode(), v.encode())
                    for k, v in HEADERS.items()
                    if k.lower().encode() not in have
                ]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class RunState:
    """The run folder; its manifest is re-read whenever another process commits to the run
    (:meth:`~histocore.manifest.Manifest.changed_by_others`) or ``manifest.jsonl`` changes
    on disk (an edit by hand, imported into the store by the read)."""

    def __init__(self, run_dir: Path, scores: Scores | None, reviewer: str) -> None:
        self.run_dir, self.scores, self.reviewer = run_dir, scores, reviewer
        #: Serialises reloads and answers: a manifest (one store connection) is never
        #: replaced while another thread writes through it.
        self.lock = threading.RLock()
        self._stamp: tuple | None = None
        self._manifest: Manifest | None = None
        #: What is worked out once a run read (:meth:`_cached`), all of one manifest,
        #: ``_cache_of``: the list order, each kept figure's place in it, the bar's counts
        #: (until an answer changes them, :meth:`recount`), the articles with a kept figure.
        self._cache_of: Manifest | None = None
        self._cache: dict[str, Any] = {}
        #: Set while the server serves (:meth:`histofetch.review.server.ReviewServer.run`):
        #: each run read is moved out of the cyclic garbage collector's way (:meth:`settle`).
        self.settles = False

    def _disk(self) -> tuple:
        """The size and time of ``manifest.jsonl``: its edit by hand, which the store cannot
        tell (the store's own commits, ours or another process's, are the manifest's to
        tell; the store files' times were not: a commit another process made while the run
        was read, stamped after the read, was never read)."""
        try:
            st = (self.run_dir / MANIFEST_NAME).stat()
            return (st.st_mtime_ns, st.st_size)
        except OSError:
            return (None, None)

    def manifest(self) -> Manifest:
        with self.lock:
            stamp = self._disk()  # before the read: an edit while it reads is read next time
            if self._manifest is None or stamp != self._stamp or self._manifest.changed_by_others():
                # the old one is not closed here: a request may still read it (GC closes it);
                # nor kept by the caches of it (the list, the counts, the articles), which held
                # the old run's rows, and its connection, through the next settle()
                self._manifest = None
                self._drop_caches()
                self._manifest = load_folder(self.run_dir)
                self._stamp = stamp
                if self.settles:
                    self.settle()
            return self._manifest

    def settle(self) -> None:
        """Collect once, then freeze what is left (:func:`gc.freeze`): the run's rows, one
        object graph that lives as long as the server and holds no cycles (each row
        freed by its reference count when the run is read again). A run of 100,000
        figures is over 600,000 objects, built with the collector off
        (:func:`histocore.jsonl.bulk`): every full collection then went through all of
        them, about a second each on a loaded machine, at the first requests and again
        whenever enough answers' objects had piled up. Only while the server serves (an
        app made by a library call must not freeze its caller's objects).

        What an earlier :meth:`settle` froze is the collector's again first: the run read
        before this one is garbage now, and its store connection is one only the collector
        closes (an ``sqlite3`` connection and its statement cache refer to each other);
        frozen, each read of the run while a stage writes it left one open."""
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    def close(self) -> None:
        """Close the run's store (the server stops): a frozen connection is never closed
        by the collector, and left ``run.sqlite-wal`` behind."""
        with self.lock:
            if self._manifest is not None:
                self._manifest.close()
            self._manifest = None
            self._drop_caches()

    def _drop_caches(self) -> None:
        self._cache_of, self._cache = None, {}

    def _cached(self, manifest: Manifest, name: str, make: Callable[[], Any]) -> Any:
        """``make()``, worked out once for ``manifest`` (the caches of another manifest, an
        earlier read of the run, are dropped first)."""
        with self.lock:
            if self._cache_of is not manifest:
                self._cache_of, self._cache = manifest, {}
            if name not in self._cache:
                self._cache[name] = make()
            return self._cache[name]

    def ordered(self, manifest: Manifest) -> list[Image]:
        """The kept figures of ``manifest`` in reading order, sorted once a manifest, not
        at every page of the list. Answers change labels in place: the figures and their
        order stay."""
        return self._cached(manifest, "order", lambda: ordered(manifest))

    def places(self, manifest: Manifest) -> dict[str, int]:
        """Each kept figure's index in :meth:`ordered` (the place :func:`_beside` looks
        for), made once a manifest: 30 to 50 ms a request that moves past its page at
        100,000 figures."""
        return self._cached(
            manifest, "places", lambda: {i.id: n for n, i in enumerate(self.ordered(manifest))}
        )

    def progress(self, manifest: Manifest) -> dict[str, int]:
        """:func:`progress` of ``manifest``, counted once until an answer saved here changes
        a label (another process's answer makes the run read again, a new manifest)."""
        counts = self._cached(
            manifest, "counts", lambda: progress(manifest, self.ordered(manifest))
        )
        return dict(counts)

    def records(self, manifest: Manifest) -> list[Record]:
        """:func:`reviewable_records` of ``manifest``, found once a manifest (an answer
        keeps or drops no figure)."""
        return self._cached(manifest, "records", lambda: reviewable_records(manifest))

    def recount(self) -> None:
        """A label of the manifest in memory may have changed: its counts are counted again."""
        with self.lock:
            self._cache.pop("counts", None)


def _count(query: dict[str, str], name: str, default: int, most: int | None) -> int:
    """The whole number ``query[name]`` (``default`` when absent), at most ``most``."""
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        raise ValueError(f"{name} must be a whole number, not {raw[:40]!r}")
    value = int(raw)
    if most is not None and not 1 <= value <= most:
        raise ValueError(f"{name} must be from 1 to {most}")
    return value


def _beside(rows: list[Image], places: dict[str, int], image_id: str, *, after: bool) -> int | None:
    """The index in ``rows`` (the filtered list, in the order of the run's kept figures in
    reading order, whose index ``places`` gives by id) of the first figure after
    ``image_id``'s place (``after``), or the last one before it; the nearest on the other
    side when there is none; None for an empty list or a figure not kept. Found by the
    figure's place, which answers do not move: the list's indexes do (an answer takes a
    figure off the "unreviewed" list, another tab answers), so the page asked for by index
    skipped figures unseen. Asked only when the page leaves its page of the list."""
    place = places.get(image_id)
    if place is None or not rows:
        return None
    n = (bisect.bisect_right if after else bisect.bisect_left)(
        rows, place, key=lambda i: places[i.id]
    )
    if after:
        return min(n, len(rows) - 1)
    return max(n - 1, 0)


async def _capped_body(request: Request) -> bytes | None:
    """The request body, or None past :data:`MAX_BODY` bytes (read no further: an answer
    is a few hundred bytes, and Starlette's ``request.json()`` kept any size in memory)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    run_dir: str | Path,
    *,
    scores: str | Path | None = None,
    reviewer: str,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "testserver"),
) -> Starlette:
    """The ASGI app for one run folder (``scores``: a ``histomodels eval --manifest`` folder)."""
    folder = Path(run_dir)
    with contextlib.suppress(ReviewError):  # a bad run: every route's error page says why
        folder = review_folder(folder)  # RUN/manifest.jsonl: the files watched are RUN's
    return app_for(folder, Scores.load(scores) if scores else None, reviewer=reviewer, hosts=hosts)


def app_for(
    run_dir: Path, scores: Scores | None, *, reviewer: str, hosts: tuple[str, ...]
) -> Starlette:
    """:func:`create_app` for the folder :func:`review_folder` gave and scores read (the
    server checks both first, once). ``app.state.run`` is its :class:`RunState`."""
    state = RunState(run_dir, scores, reviewer)
    templates = Jinja2Templates(directory=str(HERE / "templates"))

    def error_page(request: Request, exc: Exception, status: int = 500) -> Response:
        """A run that cannot be read (any route; 500) or a bad answer (400): JSON under
        ``/api/``, else the error page."""
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(exc)}, status_code=status)
        return templates.TemplateResponse(
            request, "error.html", {"message": str(exc), "run": str(state.run_dir)}, status
        )

    async def page(request: Request) -> Response:
        manifest = state.manifest()  # a ReviewError is error_page's (exception_handlers)
        records = [{"id": r.id, "title": (r.title or r.id)[:90]} for r in state.records(manifest)]
        context: dict[str, Any] = {
            "run": str(state.run_dir),
            "reviewer": state.reviewer,
            "records": records,
            "has_scores": state.scores is not None,
            "progress": state.progress(manifest),
            "page": PAGE,  # figures the page asks for at a time
        }
        return templates.TemplateResponse(request, "index.html", context)

    async def items(request: Request) -> Response:
        query = dict(request.query_params)
        try:
            offset = _count(query, "offset", 0, None)
            limit = _count(query, "limit", PAGE, MAX_PAGE)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        manifest = state.manifest()
        kept = state.ordered(manifest)
        rows = select(kept, state.scores, query)
        at = None
        if "around" in query:  # the page of this figure (undo): where it is, if it matches
            at = next((n for n, i in enumerate(rows) if i.id == query["around"]), None)
            if at is not None:
                offset = max(0, at - limit // 4)
        for side in ("after", "before"):  # the page of the figure next to this one (moves):
            if side in query:  # mostly ahead of it, the way the reviewer goes
                at = _beside(rows, state.places(manifest), query[side], after=side == "after")
                behind = limit // 4 if side == "after" else limit - 1 - limit // 4
                if at is not None:
                    offset = max(0, at - behind)
        window = [
            {"id": i.id, "label": i.label, "weak_label": i.weak_label}
            for i in rows[offset : offset + limit]
        ]
        body = {"items": window, "offset": offset, "total": len(rows), "at": at}
        return JSONResponse({**body, "progress": state.progress(manifest)})

    async def alive(request: Request) -> Response:
        """The page's heartbeat: a server stopped is said before the next answer is lost."""
        return JSONResponse({"alive": True})

    def kept_figure(request: Request) -> tuple[Manifest, Image] | Response:
        """The manifest and the kept figure the path names, or the response saying why not
        (only the run's kept figures are served)."""
        manifest = state.manifest()
        img = manifest.images.get(request.path_params["image_id"])
        if img is None or not (img.kept and img.status == "ok"):
            return JSONResponse({"error": "no such kept figure"}, status_code=404)
        return manifest, img

    async def one(request: Request) -> Response:
        found = kept_figure(request)
        if isinstance(found, Response):
            return found
        manifest, img = found
        return JSONResponse(item(manifest, img, state.scores))

    def _label(body: Any) -> tuple[str, str | None, str]:
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise ReviewError("expected a JSON object with id, label and reviewer")
        label = body.get("label")
        if label is not None and not isinstance(label, str):
            raise ReviewError("label must be a string or null")
        reviewer = body.get("reviewer") or state.reviewer
        if not isinstance(reviewer, str):  # a value off the schema is refused, not str()-ed
            raise ReviewError("reviewer must be a string")
        return body["id"], label, reviewer

    def answer_sync(body: Any) -> dict[str, Any]:
        image_id, label, reviewer = _label(body)
        with state.lock:
            manifest = state.manifest()
            try:
                img = save_answer(manifest, image_id, label, reviewer)
            finally:  # the label in memory changes even where the store refuses it
                state.recount()
            counts = state.progress(manifest)
            return {"item": item(manifest, img, state.scores), "progress": counts}

    async def answer(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            # a cross-site form cannot send this type without a CORS preflight we never allow
            return JSONResponse({"error": "send application/json"}, status_code=415)
        text = await _capped_body(request)
        if text is None:
            return JSONResponse({"error": "request body too large"}, status_code=413)
        try:  # loads_json: also arrays nested 100,000 deep (RecursionError: a 500)
            body = loads_json(text)
        except NotJSON:
            return JSONResponse({"error": "request body is not JSON"}, status_code=400)
        try:
            return JSONResponse(await run_in_threadpool(answer_sync, body))
        except ReviewError as exc:
            return error_page(request, exc, 400)

    def _file(path: Path | None) -> Response:
        if path is None or not path.is_file():
            return JSONResponse({"error": "file not found"}, status_code=404)
        return FileResponse(path)

    async def image(request: Request) -> Response:
        found = kept_figure(request)
        if isinstance(found, Response):
            return found
        manifest, img = found
        # a manifest is untrusted: serve only image files inside the run folder (the rule of
        # every reader: Manifest.image_file; also a path whose links cannot be resolved).
        # The reason is the reader's: a link loop or a NUL in the path was said to be
        # "outside the run folder"
        try:
            path = manifest.image_file(img.path)
        except ManifestError as exc:
            why = one_line(str(exc).removeprefix(f"{manifest.path}: "))
            return JSONResponse({"error": why}, status_code=404)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            return JSONResponse({"error": "not an image file"}, status_code=404)
        return _file(path)

    async def heatmap(request: Request) -> Response:
        scores = state.scores
        return _file(scores.heatmap(request.path_params["image_id"]) if scores else None)

    app = Starlette(
        exception_handlers={ReviewError: error_page},
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts)),
            Middleware(SecurityHeaders),
        ],
        routes=[
            Route("/", page),
            Route("/api/items", items),
            Route("/api/item/{image_id:path}", one),
            Route("/api/alive", alive),
            Route("/api/label", answer, methods=["POST"]),
            Route("/image/{image_id:path}", image),
            Route("/heatmap/{image_id:path}", heatmap),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ],
    )
    app.state.run = state
    return app
