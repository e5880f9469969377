"""Download the posters of a URL table (Kaggle's MovieGenre.csv) into a folder.

Standard library only and no TensorFlow, so the command starts at once.
Every poster lands as out_dir/<id>.jpg, the name the dataset readers look
for; the bytes may be PNG, which the package decodes as well.

Safe to kill and rerun: a body is written to .<id>.jpg.part and renamed
only once complete and validated, and a rerun skips posters already there.
Every failure of a run is listed in out_dir/download_report.csv.

Nothing can hold a worker for ever: `timeout` bounds each read, `deadline`
each request as a whole (a server trickling a byte a second), and `max_bytes`
the body. On Ctrl-C the open connections are cut and the back-off waits end,
so the run stops at once and leaves no .part file.
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import io
import math
import os
import socket
import ssl
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urljoin, urlsplit

from genrecls import __version__
from genrecls.datasets import image_problem
from genrecls.errors import GenreclsError

SCHEMES = ("http", "https")
REPORT_NAME = "download_report.csv"
REPORT_HEADER = "id,url,reason"
PART_SUFFIX = ".jpg.part"
CHUNK = 64 * 1024
MAX_WAIT = 60.0  # seconds: cap on Retry-After and on the back-off
WATCH_TICK = 0.1  # seconds between the watchdog's looks at the open connections
USER_AGENT = f"genrecls/{__version__} (poster downloader)"
# Characters left as they are when a URL is percent-encoded for the request.
URL_SAFE = "/:?#[]@!$&'()*+,;=%~"

# Failure reasons: the report's reason column starts with one of these,
# or is "HTTP <code>", or comes from `image_problem` ("not an image", ...).
UNSAFE_ID = "unsafe id"
NO_URL = "no URL"
NOT_HTTP = "not an http(s) URL"
MALFORMED_URL = "malformed URL"
BAD_REDIRECT = "redirect to a non-http(s) URL"
REDIRECT_LOOP = "redirect loop or too many redirects"
TIMEOUT = "timeout"
DEADLINE = "deadline exceeded"
TOO_LARGE = "too large"
INTERRUPTED = "interrupted"
EXISTING = "a file genrecls did not write is in the way"

DOWNLOADED, SKIPPED, FAILED, DUPLICATE = "downloaded", "skipped", "failed", "duplicate"


class Failure(NamedTuple):
    id: str
    url: str
    reason: str


@dataclass
class DownloadSummary:
    """What one run did; the failures are also in `report`."""

    downloaded: int = 0
    skipped: int = 0  # already present and valid: no request made
    duplicates: int = 0  # rows repeating an earlier id: ignored
    failures: list[Failure] = field(default_factory=list)
    report: Path | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return len(self.failures)

    def to_dict(self) -> dict:
        return {
            "downloaded": self.downloaded,
            "skipped": self.skipped,
            "duplicates": self.duplicates,
            "failed": self.failed,
            "report": str(self.report) if self.report else None,
            "seconds": round(self.seconds, 3),
        }

    def __str__(self) -> str:
        parts = [f"{self.downloaded:,} downloaded", f"{self.skipped:,} skipped (already present)"]
        if self.duplicates:
            parts.append(f"{self.duplicates:,} duplicate ids ignored")
        parts.append(f"{self.failed:,} failed")
        text = ", ".join(parts) + f" in {self.seconds:.1f} s"
        if self.failures and self.report:
            text += f"; reasons in {self.report}"
        return text


class _Fail(Exception):
    """A failure that another try would not fix (404, not an image, too large)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Retry(Exception):
    """A failure worth another try (timeout, 429, 5xx); `wait` from Retry-After."""

    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


# ----------------------------------------------------------------- the table


def _read_rows(csv_path, url_column: str, id_column: str) -> list[tuple[str, str]]:
    """(id, url) per row, as stripped strings; UTF-8, else Latin-1 (Kaggle's file)."""
    path = Path(csv_path).expanduser()
    if not path.is_file():
        raise GenreclsError(
            f"{path} does not exist; pass the CSV of poster URLs (e.g. Kaggle's MovieGenre.csv)"
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        columns = reader.fieldnames or []
        if not columns:
            raise GenreclsError(f"{path} is empty; it needs a header row naming the id and URL columns")
        missing = [c for c in (id_column, url_column) if c not in columns]
        if missing:
            raise GenreclsError(
                f"{path.name} has no column {', '.join(map(repr, missing))}; "
                f"its columns are {', '.join(map(repr, columns))}. "
                "Name the right ones with --id-column and --url-column."
            )
        return [((row[id_column] or "").strip(), (row[url_column] or "").strip()) for row in reader]
    except csv.Error as exc:
        raise GenreclsError(f"cannot parse {path}: {exc}") from None


def _unsafe_id(movie_id: str) -> bool:
    """True when <id>.jpg could land outside the folder, hidden, or not at all."""
    return (
        not movie_id
        or movie_id.startswith(".")
        or ".." in movie_id
        or any(c in movie_id for c in "/\\")
        or not movie_id.isprintable()  # NUL and other control characters
        or len(f".{movie_id}{PART_SUFFIX}".encode()) > 255  # longest file name
    )


def _url_problem(url: str) -> str | None:
    """Why a URL is refused before any request, or None."""
    if not url:
        return NO_URL
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a non-numeric port
    except ValueError:
        return MALFORMED_URL
    if parts.scheme.lower() not in SCHEMES:
        return NOT_HTTP
    if not parts.hostname:
        return MALFORMED_URL
    return None


# ------------------------------------------------------------------ requests


class RateLimiter:
    """At most `rate` requests per second to each host, across all threads.

    Each call reserves the host's next free slot under a lock, then waits
    outside it, so threads waiting on one host never hold up another.
    """

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate else 0.0
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, host: str, stop: threading.Event | None = None) -> None:
        """Wait for the host's slot, or until `stop` is set."""
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next.get(host, now))
            self._next[host] = slot + self.interval
        delay = slot - time.monotonic()
        if delay > 0:
            (stop or threading.Event()).wait(delay)


class _InFlight:
    """Each worker's open connection and the deadline of its request.

    A timeout bounds one read only. The watchdog (`watch`, on its own thread)
    shuts down a connection past its deadline, and every one once `stop` is
    set: a shutdown wakes the worker blocked reading it at once. It works on
    a duplicate of each socket, closed here, so it never touches a descriptor
    that the worker has closed and the system has reused.
    """

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self._lock = threading.Lock()
        self._deadlines: dict[int, float] = {}  # worker thread -> deadline of its request
        self._sockets: dict[int, socket.socket] = {}  # worker thread -> its connection (a dup)

    @contextlib.contextmanager
    def request(self, deadline: float):
        """Around one request (redirects included) on the calling thread."""
        worker = threading.get_ident()
        with self._lock:
            self._deadlines[worker] = deadline
        try:
            yield
        finally:
            with self._lock:
                del self._deadlines[worker]
                self._drop(worker)

    def connected(self, sock: socket.socket) -> None:
        """Called by the connection classes once a socket is open."""
        worker = threading.get_ident()
        with self._lock:
            if worker in self._deadlines:
                self._drop(worker)  # the previous hop of a redirect
                self._sockets[worker] = socket.fromfd(sock.fileno(), sock.family, sock.type)

    def cut(self) -> None:
        """Shut down the connections past their deadline, or all once stopped."""
        now = time.monotonic()
        with self._lock:
            late = [w for w in self._sockets if self.stop.is_set() or now >= self._deadlines[w]]
            for worker in late:
                with contextlib.suppress(OSError):
                    self._sockets[worker].shutdown(socket.SHUT_RDWR)
                self._drop(worker)

    def watch(self, finished: threading.Event) -> None:
        while not finished.wait(WATCH_TICK):
            self.cut()

    def _drop(self, worker: int) -> None:
        sock = self._sockets.pop(worker, None)
        if sock is not None:
            sock.close()


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (urllib alone would follow one to ftp:),
    and name a loop as such (urllib reports it as the HTTP code of the last hop)."""

    def http_error_302(self, req, fp, code, msg, headers):
        target = headers.get("Location") or headers.get("URI") or ""
        if urlsplit(urljoin(req.full_url, target)).scheme.lower() not in SCHEMES:
            fp.close()
            raise _Fail(BAD_REDIRECT)
        try:
            return super().http_error_302(req, fp, code, msg, headers)
        except HTTPError as exc:
            if not str(exc.reason).startswith(self.inf_msg):
                raise
            exc.close()
            raise _Fail(REDIRECT_LOOP) from None

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener(inflight: _InFlight) -> urllib.request.OpenerDirector:
    """urllib's opener without the file:, ftp: and data: handlers, whose
    connections report to `inflight`."""

    class Connection(http.client.HTTPConnection):
        def connect(self):
            super().connect()
            inflight.connected(self.sock)

    class SecureConnection(http.client.HTTPSConnection, Connection):
        """Verifies certificates as urllib does; HTTPSConnection.connect calls
        Connection.connect, so the socket is tracked before the handshake."""

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(Connection, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(SecureConnection, req)

    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        HTTPHandler(),
        HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        _HttpOnlyRedirects(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def _retry_after(headers) -> float | None:
    """Retry-After in seconds (the date form is ignored: back-off applies)."""
    value = (headers.get("Retry-After") or "").strip() if headers else ""
    return min(float(value), MAX_WAIT) if value.isdigit() else None


def _network_reason(exc: BaseException) -> str:
    reason = exc.reason if isinstance(exc, URLError) else exc
    if isinstance(reason, TimeoutError):
        return TIMEOUT
    if isinstance(reason, http.client.IncompleteRead):
        return "incomplete response"
    return f"connection error ({reason})"


def _printable(text: str) -> str:
    """Control characters escaped, so the report stays one line per failure."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


@dataclass
class _Fetcher:
    """Downloads one poster with retries; shared by the worker threads."""

    opener: urllib.request.OpenerDirector
    inflight: _InFlight
    limiter: RateLimiter
    retries: int
    timeout: float  # seconds per read
    deadline: float  # seconds per request in all, connecting and redirects included
    max_bytes: int
    backoff: float

    @property
    def stop(self) -> threading.Event:
        return self.inflight.stop

    def download(self, movie_id: str, url: str, out: Path) -> tuple[str, str | None]:
        """(status, failure reason) for one row; never raises for one bad row."""
        final = out / f"{movie_id}.jpg"
        part = out / f".{movie_id}{PART_SUFFIX}"
        try:
            if self.stop.is_set():
                return FAILED, INTERRUPTED
            if os.path.lexists(final):
                # genrecls only ever renames a validated download into place, so a broken file
                # here is not its own: report it, never replace it.
                problem = image_problem(final)
                if problem is None:
                    return SKIPPED, None
                return FAILED, f"{EXISTING}: {final.name} ({problem}); move it away to download it again"
            problem = _url_problem(url)
            if problem:
                return FAILED, problem
            reason = self._with_retries(url, part)
            if reason:
                return FAILED, reason
            os.replace(part, final)
            return DOWNLOADED, None
        except OSError as exc:
            return FAILED, f"cannot write {final.name} ({exc.strerror or exc})"
        except Exception as exc:  # noqa: BLE001 - a surprise in one row must not stop the others
            return FAILED, f"unexpected error ({type(exc).__name__}: {exc})"
        finally:
            with contextlib.suppress(OSError):
                part.unlink(missing_ok=True)

    def _with_retries(self, url: str, part: Path) -> str | None:
        """None once `part` holds a valid image, else the last failure reason."""
        tries = self.retries + 1
        for attempt in range(tries):
            try:
                self._get(url, part)
                return None
            except _Fail as exc:
                return exc.reason
            except _Retry as exc:
                reason, wait = exc.reason, exc.wait or 0.0
            if attempt + 1 < tries:
                delay = min(max(self.backoff * 2**attempt, wait), MAX_WAIT)
                if self.stop.wait(delay):  # set on Ctrl-C: give up now
                    return INTERRUPTED
        return f"{reason} after {tries} tries" if tries > 1 else reason

    def _get(self, url: str, part: Path) -> None:
        """One GET into `part`, checked; raises _Fail or _Retry.

        Past the deadline the watchdog cuts the connection, and the request
        fails with DEADLINE, not retried: so slow a server is no faster on
        the next try."""
        self.limiter.wait((urlsplit(url).hostname or "").lower(), self.stop)
        deadline = time.monotonic() + self.deadline
        self._check(deadline)  # Ctrl-C while waiting for the host's slot
        with self.inflight.request(deadline):
            try:
                content_type = self._transfer(url, part, deadline)
            finally:  # a cut connection fails in one of many ways: name the cause
                self._check(deadline)
        self._check_image(part, content_type)

    def _check(self, deadline: float) -> None:
        """Raise _Fail once stopped (Ctrl-C) or past the request's deadline."""
        if self.stop.is_set():
            raise _Fail(INTERRUPTED)
        if time.monotonic() >= deadline:
            raise _Fail(f"{DEADLINE} ({self.deadline:g} s)")

    def _open(self, url: str):
        """The response to a GET of `url` (redirects followed); raises _Fail or _Retry."""
        request = urllib.request.Request(
            quote(url, safe=URL_SAFE), headers={"User-Agent": USER_AGENT, "Accept": "image/*"}
        )
        try:
            return self.opener.open(request, timeout=self.timeout)
        except HTTPError as exc:
            exc.close()
            if exc.code == 429 or exc.code >= 500:
                wait = _retry_after(exc.headers) if exc.code in (429, 503) else None
                raise _Retry(f"HTTP {exc.code}", wait) from None
            raise _Fail(f"HTTP {exc.code}") from None
        except URLError as exc:
            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                raise _Fail(f"bad certificate ({exc.reason.verify_message})") from None
            raise _Retry(_network_reason(exc)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Retry(_network_reason(exc)) from None
        except ValueError:
            raise _Fail(MALFORMED_URL) from None

    def _transfer(self, url: str, part: Path, deadline: float) -> str:
        """GET `url` into `part`, within the size cap; the reply's Content-Type."""
        too_large = f"{TOO_LARGE} (over {self.max_bytes:,} bytes)"
        with self._open(url) as response:
            content_type = response.headers.get("Content-Type", "no content type").split(";")[0]
            declared = (response.headers.get("Content-Length") or "").strip()
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise _Fail(too_large)  # before reading any of it
            received = 0
            with open(part, "wb") as f:
                while True:
                    try:
                        chunk = response.read1(CHUNK)  # what has arrived, so the checks run often
                    except (OSError, http.client.HTTPException) as exc:
                        raise _Retry(_network_reason(exc)) from None
                    if not chunk:
                        break
                    self._check(deadline)
                    received += len(chunk)
                    if received > self.max_bytes:
                        raise _Fail(too_large)
                    f.write(chunk)
            if declared.isdigit() and received < int(declared):
                raise _Retry("incomplete response")  # the connection closed early
        return content_type

    @staticmethod
    def _check_image(part: Path, content_type: str) -> None:
        problem = image_problem(part)
        if problem == "not an image":
            raise _Fail(f"not an image ({content_type})")
        if problem and problem.startswith("truncated"):
            raise _Retry(problem)
        if problem:
            raise _Fail(problem)


# ------------------------------------------------------------------ the run


class _Progress:
    """done/total and counts on stderr: redrawn in place on a terminal,
    one line per tenth of the work elsewhere (logs stay short)."""

    def __init__(self, total: int, enabled: bool):
        self.total = total
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.step = max(1, total // 10)
        self.next_line = self.step
        self.last = 0.0

    def update(self, done: int, downloaded: int, skipped: int, failed: int) -> None:
        if not self.enabled:
            return
        line = (
            f"posters {done:,}/{self.total:,}: {downloaded:,} downloaded, "
            f"{skipped:,} skipped, {failed:,} failed"
        )
        now = time.monotonic()
        if self.tty and (now - self.last >= 0.1 or done == self.total):
            sys.stderr.write("\r" + line)
            sys.stderr.flush()
            self.last = now
        elif not self.tty and (done >= self.next_line or done == self.total):
            sys.stderr.write(line + "\n")
            self.next_line = done + self.step

    def close(self) -> None:
        if self.tty and self.last:  # end the line redrawn in place
            sys.stderr.write("\n")
            sys.stderr.flush()


def _check_options(workers, rate, retries, timeout, deadline, max_bytes, backoff) -> None:
    def positive(x) -> bool:  # NaN and infinity are refused
        return math.isfinite(x) and x > 0

    bad = []
    if workers < 1:
        bad.append(f"--workers must be at least 1 (got {workers})")
    if rate is not None and not positive(rate):
        bad.append(f"--rate must be above 0 requests/s, or left out for no limit (got {rate})")
    if retries < 0:
        bad.append(f"--retries must be 0 or more (got {retries})")
    if not positive(timeout):
        bad.append(f"--timeout must be above 0 seconds (got {timeout})")
    if not positive(deadline):
        bad.append(f"--deadline must be above 0 seconds (got {deadline})")
    if not positive(max_bytes) or max_bytes < 1:
        bad.append(f"the size cap (--max-mb) must be above 0 (got {max_bytes} bytes)")
    if not (math.isfinite(backoff) and backoff >= 0):
        bad.append(f"backoff must be 0 or more seconds (got {backoff})")
    if bad:
        raise GenreclsError("; ".join(bad))


def _prepare_folder(out_dir, ids) -> Path:
    """Create the folder and remove the .part files a killed run left for `ids`.

    Only .<id>.jpg.part of the table's ids: another file of that shape (say
    .mine.jpg.part) is not one genrecls wrote, so it stays.
    """
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise GenreclsError(f"{out} is a file; pass a folder to download the posters into")
    try:
        out.mkdir(parents=True, exist_ok=True)
        present = set(os.listdir(out))
    except OSError as exc:
        raise GenreclsError(f"cannot create {out} ({exc.strerror or exc}); pass a writable folder") from None
    _check_report(out / REPORT_NAME)
    for name in present.intersection(f".{movie_id}{PART_SUFFIX}" for movie_id in ids):
        with contextlib.suppress(OSError):
            (out / name).unlink()
    return out


def _check_report(path: Path) -> None:
    """Refuse to replace a download_report.csv that genrecls did not write."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            ours = f.readline().rstrip("\r\n") == REPORT_HEADER
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError):
        ours = False
    if not ours:
        raise GenreclsError(
            f"{path} exists and was not written by genrecls; move it away or pick another --out"
        )


def _write_report(path: Path, failures: list[Failure]) -> None:
    try:
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(REPORT_HEADER.split(","))
            writer.writerows([_printable(x) for x in failure] for failure in failures)
    except OSError as exc:
        raise GenreclsError(f"cannot write {path} ({exc.strerror or exc})") from None


def download_posters(
    csv_path,
    out_dir,
    url_column: str = "Poster",
    id_column: str = "imdbId",
    workers: int = 8,
    rate: float | None = None,
    retries: int = 3,
    timeout: float = 10.0,
    deadline: float = 120.0,
    max_bytes: int = 10 * 1024 * 1024,
    backoff: float = 0.5,
    progress: bool = True,
) -> DownloadSummary:
    """Download every row's poster to out_dir/<id>.jpg; return what happened.

    rate: most requests per second to any one host (None: no limit).
    retries: further tries after a timeout, connection error, 429 or 5xx,
        waiting backoff * 2**try seconds, or longer when Retry-After says so.
        Other 4xx, non-images and over-size bodies fail at once.
    timeout: seconds any one read (or the connection) may take.
    deadline: seconds one request may take in all, connecting and redirects
        included; past it the poster fails, "deadline exceeded", not retried.
    max_bytes: largest poster accepted: a larger Content-Length is refused
        before reading, a longer body aborted mid-read.
    progress: show progress on stderr (the caller prints the summary).

    Ctrl-C (KeyboardInterrupt) cuts the open connections and ends the
    back-off waits; it propagates once the workers are done, within a second
    or so (up to `timeout` for a request still connecting), and no .part file
    is left. The failures of this run replace out_dir/download_report.csv.
    """
    _check_options(workers, rate, retries, timeout, deadline, max_bytes, backoff)
    rows = _read_rows(csv_path, url_column, id_column)
    out = _prepare_folder(out_dir, {movie_id for movie_id, _ in rows if not _unsafe_id(movie_id)})
    summary = DownloadSummary(report=out / REPORT_NAME)
    started = time.monotonic()
    failures: list[tuple[int, Failure]] = []
    counts = {DOWNLOADED: 0, SKIPPED: 0, DUPLICATE: 0}
    bar = _Progress(len(rows), progress)
    done = 0

    def finish(index: int, movie_id: str, url: str, status: str, reason: str | None) -> None:
        nonlocal done
        done += 1
        if status == FAILED:
            failures.append((index, Failure(movie_id, url, reason or "unknown")))
        else:
            counts[status] += 1
        bar.update(done, counts[DOWNLOADED], counts[SKIPPED], len(failures))

    jobs, seen = [], set()
    for index, (movie_id, url) in enumerate(rows):
        if _unsafe_id(movie_id):
            finish(index, movie_id, url, FAILED, UNSAFE_ID)
        elif movie_id in seen:
            finish(index, movie_id, url, DUPLICATE, None)
        else:
            seen.add(movie_id)
            jobs.append((index, movie_id, url))

    inflight = _InFlight(threading.Event())
    fetcher = _Fetcher(
        _opener(inflight), inflight, RateLimiter(rate), retries=retries, timeout=timeout,
        deadline=deadline, max_bytes=max_bytes, backoff=backoff,
    )
    finished = threading.Event()
    threading.Thread(target=inflight.watch, args=(finished,), name="download-watchdog", daemon=True).start()
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="download") as pool:
            futures = {pool.submit(fetcher.download, m, u, out): (i, m, u) for i, m, u in jobs}
            try:
                for future in as_completed(futures):
                    finish(*futures[future], *future.result())
            except BaseException:  # Ctrl-C: drop queued work, cut the running requests
                inflight.stop.set()
                pool.shutdown(wait=False, cancel_futures=True)
                raise  # once the `with` has waited for the running workers
    finally:
        finished.set()
        bar.close()
        summary.downloaded, summary.skipped = counts[DOWNLOADED], counts[SKIPPED]
        summary.duplicates = counts[DUPLICATE]
        summary.failures = [failure for _, failure in sorted(failures)]
        summary.seconds = time.monotonic() - started
        _write_report(summary.report, summary.failures)
    return summary
