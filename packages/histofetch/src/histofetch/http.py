"""The one HTTP client every network stage uses: rate limits, retries, identification.

NCBI asks E-utilities users for at most 3 requests/s (10/s with an API key), a ``tool``
and ``email`` on every call, and backing off on HTTP 429; S3 answers overload with
``503 SlowDown``. :class:`NetClient` does all of that in one place (one sliding-window
limiter per host, one retry loop) so the stages never talk to ``httpx`` directly. Base
URLs and rates come from :class:`NetConfig`, whose defaults are the live services and
which environment variables (``HISTOFETCH_*``) override, so tests point the whole tool
at a local server.
"""

from __future__ import annotations

import email.utils
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from histocore.errors import DomainError, UsageError
from histocore.io import number_text
from histofetch import __version__ as _VERSION
from histofetch.settings import Range, env_number, env_url, url_problem

EUTILS_URL = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils/"
#: The current PMC ID Converter API (the old www.ncbi.nlm.nih.gov/pmc/utils/idconv/v1.0/
#: address redirects here).
IDCONV_URL = "https://pmc.ncbi.nlm.nih.gov/tools/idconv/api/v1/articles/"
#: The PMC Cloud Service: the world-readable S3 bucket that replaced oa.fcgi in 2026.
PMC_CLOUD_URL = "https://pmc-oa-opendata.s3.amazonaws.com/"
#: Europe PMC's REST API (fullTextXML, supplementaryFiles).
EUROPEPMC_URL = "https://www.ebi.ac.uk/europepmc/webservices/rest/"
#: Europe PMC's web site (``/articles/PMCxxxx?pdf=render``).
EUROPEPMC_RENDER_URL = "https://europepmc.org/"

#: HTTP statuses worth retrying: rate limited, or a transient server/gateway problem.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def _env_opt(name: str) -> str | None:
    return os.environ.get(name) or None


#: Ranges of :class:`NetConfig`'s numbers and of the ``HISTOFETCH_*`` variables that set
#: them: a timeout of up to a day (larger ones overflow the socket's timer), rates whose
#: one wait is at most 1000 s (a smaller rate waited for ever or overflowed the limiter's
#: clock; a larger one sized its window past memory), retries and backoffs a person could
#: wait for (a backoff of up to an hour; each wait is capped at ``max_backoff`` anyway).
TIMEOUT = Range(0.0, 86400.0, open_low=True)
RATE = Range(0.001, 1000.0)
RETRIES = Range(0, 100, whole=True)
BACKOFF = Range(0.0, 3600.0)
#: The largest response body: at least 1 byte (0 or less refused every body), at most 64 GiB.
BODY_BYTES = Range(1, 64 * 1024**3, whole=True)
_RANGES = {
    "timeout": TIMEOUT,
    "max_retries": RETRIES,
    "backoff": BACKOFF,
    "max_backoff": BACKOFF,
    "ncbi_rate": RATE,
    "pmc_cloud_rate": RATE,
    "europepmc_rate": RATE,
    "other_rate": RATE,
    "max_bytes": BODY_BYTES,
}
_URLS = ("eutils_url", "idconv_url", "pmc_cloud_url", "europepmc_url", "europepmc_render_url")


@dataclass
class NetConfig:
    """Where the services live and how politely to call them.

    Every field has an environment override (read when the config is created), so a
    user or a test can redirect the tool without code changes.
    """

    eutils_url: str = field(default_factory=lambda: env_url("HISTOFETCH_EUTILS_URL", EUTILS_URL))
    idconv_url: str = field(default_factory=lambda: env_url("HISTOFETCH_IDCONV_URL", IDCONV_URL))
    pmc_cloud_url: str = field(
        default_factory=lambda: env_url("HISTOFETCH_PMC_CLOUD_URL", PMC_CLOUD_URL)
    )
    europepmc_url: str = field(
        default_factory=lambda: env_url("HISTOFETCH_EUROPEPMC_URL", EUROPEPMC_URL)
    )
    europepmc_render_url: str = field(
        default_factory=lambda: env_url("HISTOFETCH_EUROPEPMC_RENDER_URL", EUROPEPMC_RENDER_URL)
    )
    api_key: str | None = field(default_factory=lambda: _env_opt("NCBI_API_KEY"))
    email: str | None = field(default_factory=lambda: _env_opt("NCBI_EMAIL"))
    tool: str = "histofetch"
    #: Seconds for connect/read/write/pool each.
    timeout: float = field(default_factory=lambda: env_number("HISTOFETCH_TIMEOUT", 30.0, TIMEOUT))
    #: Retries after the first attempt (so ``max_retries + 1`` attempts in all).
    max_retries: int = field(
        default_factory=lambda: int(env_number("HISTOFETCH_RETRIES", 4, RETRIES))
    )
    #: First backoff in seconds; doubled each retry, capped at ``max_backoff``.
    backoff: float = field(default_factory=lambda: env_number("HISTOFETCH_BACKOFF", 1.0, BACKOFF))
    max_backoff: float = 60.0
    #: NCBI requests per second; ``None`` means NCBI's limit (3, or 10 with an API key).
    ncbi_rate: float | None = None
    #: Requests per second to the PMC Cloud Service bucket.
    pmc_cloud_rate: float = field(
        default_factory=lambda: env_number("HISTOFETCH_PMC_CLOUD_RATE", 10.0, RATE)
    )
    #: Requests per second to each Europe PMC host (REST API, web site).
    europepmc_rate: float = field(
        default_factory=lambda: env_number("HISTOFETCH_EUROPEPMC_RATE", 5.0, RATE)
    )
    #: Requests per second to any other host (publishers).
    other_rate: float = 5.0
    #: Largest body accepted from any URL (PDFs and PMC Cloud Service figures included).
    max_bytes: int = 300 * 1024 * 1024
    user_agent: str = (
        f"histofetch/{_VERSION} (literature mining for histology figures; "
        f"python-httpx/{httpx.__version__})"
    )

    def __post_init__(self) -> None:
        """The numbers' ranges and the service URLs, however the config was made (a library
        user's ``NetConfig(timeout=math.inf)`` was taken as it was): a :class:`UsageError`."""
        for name, allowed in _RANGES.items():
            value = getattr(self, name)
            if value is not None and not allowed.holds(value):
                raise UsageError(f"NetConfig {name}={value!r}: give {allowed.wording()}")
        for name in _URLS:
            problem = url_problem(str(getattr(self, name)))
            if problem:
                raise UsageError(f"NetConfig {name}={getattr(self, name)!r}: {problem}")

    @property
    def effective_ncbi_rate(self) -> float:
        if self.ncbi_rate is not None:
            return self.ncbi_rate
        return 10.0 if self.api_key else 3.0

    def ncbi_params(self) -> dict[str, str]:
        """The identification parameters NCBI asks for on every request."""
        params = {"tool": self.tool}
        if self.email:
            params["email"] = self.email
        if self.api_key:
            params["api_key"] = self.api_key
        return params


class NetError(DomainError):
    """A request that failed for good (after retries); the message is one line."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        url: str = "",
        too_large: bool = False,
        problem: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.url = url
        #: the message less the URL, for the CLI's ``error: <url>: <problem>`` line
        #: (:func:`histocore.errors.describe`); the message itself is a record's reason
        self.subject, self.problem = (_short(url), problem) if url and problem else (None, None)
        #: the body was over ``NetConfig.max_bytes``: it will be next time too
        self.too_large = too_large

    @property
    def transient(self) -> bool:
        """Whether a later try may pass: no answer (``status`` None; a body over the size
        limit is not that) or a status in :data:`RETRY_STATUSES` (what
        :func:`histofetch.stage.is_transient` reads)."""
        if self.too_large:
            return False
        return self.status is None or self.status in RETRY_STATUSES


class Cancelled(BaseException):
    """The client was cancelled (Ctrl-C on ``download --jobs``): the request stops. A
    ``BaseException`` like ``KeyboardInterrupt``: no route or stage takes it for a failure
    of the record (nothing is committed for a cancelled record)."""


class RateLimiter:
    """At most ``rate`` request starts in any sliding window of one second (thread-safe).

    The start times of the last ``rate`` requests are kept; a new request waits until the
    oldest of them is more than ``window + margin`` ago. Unlike a token bucket that starts
    full, no burst can put more than ``rate`` starts in *any* one-second span, which is how
    NCBI counts; the margin absorbs jitter between our clock and the server's arrivals.
    ``clock`` and ``sleep`` are injectable so tests can check the schedule exactly.
    """

    def __init__(
        self,
        rate: float,
        *,
        window: float = 1.0,
        margin: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not rate > 0:
            raise ValueError("rate must be positive")
        self.window = window
        self.margin = margin
        self.burst = max(1, int(rate))
        # A fractional rate (e.g. 0.5/s) becomes 1 request per window/rate seconds.
        if rate < 1:
            self.window = window / rate
        self._clock = clock
        self._sleep = sleep
        self._starts: deque[float] = deque(maxlen=self.burst)
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait for a free slot; returns the start time recorded for this request."""
        with self._lock:
            while len(self._starts) == self.burst:
                wait = self._starts[0] + self.window + self.margin - self._clock()
                if wait <= 0:
                    break
                self._sleep(wait)
            now = self._clock()
            self._starts.append(now)
            return now


def ftp_to_https(url: str) -> str:
    """Old NCBI links name ``ftp://ftp.ncbi.nlm.nih.gov/...``; the same files are served
    over HTTPS, which works through proxies and with httpx."""
    if url.startswith("ftp://"):
        return "https://" + url[len("ftp://") :]
    return url


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _short(url: str) -> str:
    url = str(url)
    return url if len(url) <= 120 else url[:117] + "..."


class NetClient:
    """One ``httpx.Client`` plus NCBI etiquette; use as a context manager."""

    def __init__(self, config: NetConfig | None = None) -> None:
        self.config = config or NetConfig()
        self.config.max_retries = max(0, int(self.config.max_retries))
        self._client = httpx.Client(
            timeout=httpx.Timeout(self.config.timeout),
            follow_redirects=True,
            headers={"User-Agent": self.config.user_agent},
        )
        self._cancelled = threading.Event()
        self._ncbi_limiter = RateLimiter(self.config.effective_ncbi_rate, sleep=self._pause)
        self._host_limiters: dict[str, RateLimiter] = {}
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        self._client.close()

    def cancel(self) -> None:
        """Stop every request of every thread, now and later: waits for a rate limit or a
        retry end at once and a body being read stops at its next chunk, each raising
        :class:`Cancelled`. (A read blocked on a silent server ends at its timeout; the
        pool does not wait for it.)"""
        self._cancelled.set()

    def _pause(self, seconds: float) -> None:
        """Sleep, unless cancelled meanwhile (then :class:`Cancelled`)."""
        if self._cancelled.wait(max(0.0, seconds)):
            raise Cancelled("cancelled")

    def _check(self) -> None:
        if self._cancelled.is_set():
            raise Cancelled("cancelled")

    def __enter__(self) -> NetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ----------------------------------------------------------------------
    def ncbi(
        self, method: str, url: str, params: Mapping[str, Any] | None = None, **kw: Any
    ) -> httpx.Response:
        """A request to an NCBI service: adds tool/email/api_key, shares the NCBI limit.

        For ``POST`` the parameters travel in the form body (long id lists make GET URLs
        too long: NCBI answers those with HTTP 414).
        """
        merged = {**self.config.ncbi_params(), **(params or {})}
        if method.upper() == "POST":
            return self.request("POST", url, data=merged, ncbi=True, **kw)
        return self.request(method, url, params=merged, ncbi=True, **kw)

    def get_bytes(
        self, url: str, *, params: Mapping[str, Any] | None = None, ncbi: bool = False
    ) -> tuple[bytes, httpx.Response]:
        """GET a body (size-capped), following redirects, with retries."""
        url = ftp_to_https(url)
        response = self.request("GET", url, params=params, ncbi=ncbi)
        return response.content, response

    def request(
        self,
        method: str,
        url: str,
        *,
        ncbi: bool = False,
        ok_statuses: tuple[int, ...] = (),
        **kw: Any,
    ) -> httpx.Response:
        """Send with rate limiting and retries; raise :class:`NetError` on final failure.

        Retries: connection errors, timeouts and statuses in :data:`RETRY_STATUSES`, with
        exponential backoff (``backoff * 2**attempt``, jittered, capped) or the server's
        ``Retry-After`` when it gives one. Other 4xx are final at once, except statuses
        listed in ``ok_statuses``, which are returned to the caller.
        """
        cfg = self.config
        try:
            scheme = httpx.URL(url).scheme
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise NetError(f"invalid URL {_short(str(url))!r} ({exc})", url=str(url)) from None
        if scheme not in ("http", "https"):
            problem = f"unsupported URL scheme {scheme!r}"
            raise NetError(f"{problem}: {_short(url)}", url=url, problem=problem)
        last, problem = "", ""  # the reason, and it as the URL's problem
        for attempt in range(cfg.max_retries + 1):
            self._check()
            self._limiter_for(url, ncbi).acquire()
            delay: float | None = None
            try:
                response = self._send(method, url, **kw)
            except httpx.TimeoutException:
                problem = f"timed out after {number_text(cfg.timeout)} s"
                last = f"{problem}: {_short(url)}"
            except httpx.TransportError as exc:
                problem = f"connection failed ({type(exc).__name__}: {exc})"
                last = f"{problem}: {_short(url)}"
            else:
                status = response.status_code
                if status < 400 or status in ok_statuses:
                    return response
                problem = f"HTTP {status}"
                last = f"HTTP {status} from {_short(str(response.url))}"
                if status not in RETRY_STATUSES:
                    raise NetError(last, status=status, url=str(response.url), problem=problem)
                delay = _retry_after(response)
            if attempt == cfg.max_retries:
                break
            if delay is None:
                delay = cfg.backoff * (2**attempt) * (1 + 0.1 * random.random())
            self._pause(min(delay or 0.0, cfg.max_backoff))
        tries = cfg.max_retries + 1
        gave_up = f" (gave up after {tries} attempt{'s' if tries != 1 else ''})"
        raise NetError(f"{last}{gave_up}", url=url, problem=problem + gave_up)

    def _send(self, method: str, url: str, **kw: Any) -> httpx.Response:
        """One attempt; the body is read with a size cap so a huge file cannot fill memory."""
        request = self._client.build_request(method, url, **kw)
        response = self._client.send(request, stream=True)
        try:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > self.config.max_bytes:
                problem = f"response too large ({int(declared)} bytes > {self.config.max_bytes})"
                raise NetError(
                    f"{problem}: {_short(url)}", url=url, too_large=True, problem=problem
                )
            chunks: list[bytes] = []
            total = 0
            for chunk in response.iter_bytes():
                self._check()
                total += len(chunk)
                if total > self.config.max_bytes:
                    problem = f"response too large (> {self.config.max_bytes} bytes)"
                    raise NetError(
                        f"{problem}: {_short(url)}", url=url, too_large=True, problem=problem
                    )
                chunks.append(chunk)
            response._content = b"".join(chunks)  # what .read() would have set
        finally:
            response.close()
        return response

    def _limiter_for(self, url: str, ncbi: bool) -> RateLimiter:
        if ncbi:
            return self._ncbi_limiter
        host = httpx.URL(url).host
        with self._lock:
            if host not in self._host_limiters:
                self._host_limiters[host] = RateLimiter(self._rate_for(host), sleep=self._pause)
            return self._host_limiters[host]

    def _rate_for(self, host: str) -> float:
        """The configured rate of the service on ``host`` (the bucket, Europe PMC, other)."""
        cfg = self.config
        for base, rate in (
            (cfg.pmc_cloud_url, cfg.pmc_cloud_rate),
            (cfg.europepmc_url, cfg.europepmc_rate),
            (cfg.europepmc_render_url, cfg.europepmc_rate),
        ):
            try:
                if httpx.URL(base).host == host:
                    return rate
            except (httpx.InvalidURL, ValueError, TypeError):
                continue
        return cfg.other_rate
