"""Poster downloader, against a real HTTP server on 127.0.0.1 serving real posters."""

from __future__ import annotations

import csv
import io
import math
import os
import signal
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from genrecls.cli import main
from genrecls.download import (
    BAD_REDIRECT,
    MALFORMED_URL,
    NO_URL,
    NOT_HTTP,
    REDIRECT_LOOP,
    REPORT_NAME,
    UNSAFE_ID,
    RateLimiter,
    download_posters,
)
from genrecls.errors import GenreclsError

SLOW_SECONDS = 1.5  # the /slow route's delay, well past the client timeout below
TRICKLE_GAP = 0.05  # seconds between the bytes of the /trickle routes, well within that timeout
HANG_SECONDS = 10  # how long the /hang routes keep a connection open and silent
FAST = {"timeout": 0.5, "retries": 1, "backoff": 0.05, "progress": False}
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class Handler(BaseHTTPRequestHandler):
    """One route per server behaviour the downloader must cope with."""

    def log_message(self, *args):  # keep the test output clean
        pass

    def send(self, code, body=b"", content_type="image/jpeg", headers=(), length=True):
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            if length:
                self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up first (timeout, size cap)
            pass

    def trickle(self, data: bytes):
        """Send `data` a byte at a time until it ends, the client hangs up or the test does."""
        try:
            for byte in data:
                if self.server.release.wait(TRICKLE_GAP):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
        except OSError:
            pass

    def hang(self, code=200, length=10**6, body=b"\xff\xd8\xff"):
        """Headers and a first few bytes, then silence until the test ends (or HANG_SECONDS)."""
        self.send(code, body, length=False, headers=[("Content-Length", str(length))])
        self.wfile.flush()
        self.server.release.wait(HANG_SECONDS)

    def do_GET(self):
        server = self.server
        with server.lock:
            server.hits[self.path] += 1
            nth = server.hits[self.path]
            server.times[self.path].append(time.monotonic())
        posters = server.posters
        if self.path.startswith("/poster/"):
            self.send(200, posters[int(self.path.rsplit("/", 1)[1])])
        elif self.path == "/missing":
            self.send(404, b"<html>not found</html>", "text/html")
        elif self.path == "/flaky":  # 500 first, then the poster
            self.send(500, b"oops", "text/plain") if nth == 1 else self.send(200, posters[3])
        elif self.path == "/limited":  # 429 first, then the poster
            if nth == 1:
                self.send(429, b"slow down", "text/plain", headers=[("Retry-After", "1")])
            else:
                self.send(200, posters[4])
        elif self.path == "/redirect":
            self.send(302, headers=[("Location", "/poster/5")])
        elif self.path == "/redirect-file":
            self.send(302, headers=[("Location", "file:///etc/passwd")])
        elif self.path == "/redirect-ftp":
            self.send(302, headers=[("Location", "ftp://127.0.0.1/poster.jpg")])
        elif self.path == "/slow":
            time.sleep(SLOW_SECONDS)
            self.send(200, posters[1])
        elif self.path == "/html":
            self.send(200, b"<!doctype html><html><body>Poster unavailable</body></html>", "text/html")
        elif self.path == "/big":  # declared too large
            self.send(200, b"\xff\xd8\xff" + bytes(100_000))
        elif self.path == "/big-stream":  # no Content-Length: only counting catches it
            self.send(200, b"\xff\xd8\xff" + bytes(100_000), length=False)
        elif self.path == "/trickle":  # a byte every TRICKLE_GAP: each read is quick, the body is not
            body = posters[1]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.trickle(body)
        elif self.path == "/trickle-head":  # even the headers come a byte at a time
            self.trickle(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 10_000 + b"\r\n\r\n")
        elif self.path.startswith("/hang"):  # mid-body, then silent
            self.hang()
        elif self.path == "/huge-declared":  # Content-Length over the cap, then silent: never read
            self.hang(length=10**10)
        elif self.path == "/unavailable":  # 503 asking for the longest wait
            self.send(503, b"busy", "text/plain", headers=[("Retry-After", "3600")])
        elif self.path == "/loop":
            self.send(302, headers=[("Location", "/loop")])
        elif self.path == "/cut":  # the connection closes after half the body
            body = posters[1]
            self.send(200, body[: len(body) // 2], length=False, headers=[("Content-Length", str(len(body)))])
        else:
            self.send(404, b"no such route", "text/plain")


class PosterServer(ThreadingHTTPServer):
    # The default listen backlog of 5 overflows when 8 workers connect at
    # once; Linux then drops a SYN and resends it only after 1 s, past the
    # tests' 0.5 s timeout, which would make the request counts flaky.
    request_queue_size = 64


@pytest.fixture
def server(ml1m, monkeypatch):
    """A threaded server on a free loopback port; counts and times every request."""
    for name in PROXY_VARS:  # a proxy from the environment must not see loopback traffic
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    httpd = PosterServer(("127.0.0.1", 0), Handler)
    httpd.posters = {n: (ml1m / "posters" / f"{n}.jpg").read_bytes() for n in range(1, 7)}
    httpd.hits = Counter()
    httpd.times = defaultdict(list)
    httpd.lock = threading.Lock()
    httpd.release = threading.Event()  # ends the /trickle and /hang routes
    httpd.url = lambda path: f"http://127.0.0.1:{httpd.server_address[1]}{path}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def write_table(path: Path, rows, encoding="utf-8") -> Path:
    """A Kaggle-style MovieGenre.csv from (id, url) pairs."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["imdbId", "Title", "Genre", "Poster"])
    for movie_id, url in rows:
        writer.writerow([movie_id, "Amélie (2001)", "Comedy|Romance", url])
    path.write_bytes(text.getvalue().encode(encoding))
    return path


def timed_download(tmp_path: Path, rows, **options):
    """(poster folder, summary, seconds) of downloading rows into tmp_path/posters."""
    table = write_table(tmp_path / "MovieGenre.csv", rows)
    out = tmp_path / "posters"
    start = time.monotonic()
    summary = download_posters(table, out, **options)
    return out, summary, time.monotonic() - start


def read_report(out: Path) -> list[dict]:
    with open(out / REPORT_NAME, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["id", "url", "reason"]
        return list(reader)


@pytest.mark.integration
def test_downloads_retries_and_reports(server, tmp_path):
    url = server.url
    rows = [
        ("1", url("/poster/1")),
        ("2", url("/poster/2")),
        ("3", url("/flaky")),
        ("4", url("/limited")),
        ("5", url("/redirect")),
        ("1", url("/poster/2")),  # duplicate id: the first row wins
        ("404", url("/missing")),
        ("slow", url("/slow")),
        ("html", url("/html")),
        ("big", url("/big")),
        ("bigstream", url("/big-stream")),
        ("cut", url("/cut")),
        ("redirfile", url("/redirect-file")),
        ("redirftp", url("/redirect-ftp")),
        ("file", "file:///etc/passwd"),
        ("ftp", "ftp://127.0.0.1/poster.jpg"),
        ("nourl", ""),
        ("nohost", "http:///poster.jpg"),
        ("badport", "http://127.0.0.1:notaport/poster.jpg"),
        ("../evil", url("/poster/1")),
        ("a/b", url("/poster/1")),
        ("a\\b", url("/poster/1")),
        (".hidden", url("/poster/1")),
        ("", url("/poster/1")),
    ]
    table = write_table(tmp_path / "MovieGenre.csv", rows, encoding="latin-1")  # as Kaggle ships it
    out = tmp_path / "posters"

    summary = download_posters(table, out, workers=8, max_bytes=40_000, **FAST)

    # Exactly the five good posters landed, byte for byte, and nothing else.
    assert sorted(os.listdir(out)) == ["1.jpg", "2.jpg", "3.jpg", "4.jpg", "5.jpg", REPORT_NAME]
    for n in range(1, 6):
        assert (out / f"{n}.jpg").read_bytes() == server.posters[n]
    assert not list(tmp_path.glob("**/*evil*")) and not (tmp_path / "evil.jpg").exists()

    assert (summary.downloaded, summary.skipped, summary.duplicates) == (5, 0, 1)
    report = read_report(out)
    assert summary.failed == len(report) == len(rows) - 6
    reasons = {row["id"]: row["reason"] for row in report}
    assert [row["id"] for row in report] == [r[0] for r in rows[6:]]  # in table order
    assert {row["id"]: row["url"] for row in report}["404"] == url("/missing")
    assert reasons["404"] == "HTTP 404"
    assert reasons["slow"] == "timeout after 2 tries"
    assert reasons["html"] == "not an image (text/html)"
    assert reasons["big"] == reasons["bigstream"] == "too large (over 40,000 bytes)"
    assert reasons["cut"] == "incomplete response after 2 tries"
    assert reasons["redirfile"] == reasons["redirftp"] == BAD_REDIRECT
    assert reasons["file"] == reasons["ftp"] == NOT_HTTP
    assert reasons["nourl"] == NO_URL
    assert reasons["nohost"] == reasons["badport"] == MALFORMED_URL
    for unsafe in ("../evil", "a/b", "a\\b", ".hidden", ""):
        assert reasons[unsafe] == UNSAFE_ID

    # Retried what a retry can fix, and nothing else.
    hits = server.hits
    assert hits["/flaky"] == hits["/limited"] == hits["/slow"] == hits["/cut"] == 2
    assert hits["/missing"] == hits["/html"] == hits["/big"] == hits["/big-stream"] == 1
    assert hits["/redirect-file"] == hits["/redirect-ftp"] == 1
    assert hits["/poster/1"] == hits["/poster/2"] == hits["/poster/5"] == 1  # no request for bad rows
    assert hits["/redirect"] == 1 and sum(hits.values()) == 18
    # The 429 said Retry-After: 1, so the second request came a second later.
    first, second = server.times["/limited"]
    assert second - first >= 0.9
    assert "5 downloaded" in str(summary) and f"{summary.failed} failed" in str(summary)


@pytest.mark.integration
def test_resume_after_interrupted_run(server, tmp_path, capsys):
    posters, url = server.posters, server.url
    out = tmp_path / "posters"
    out.mkdir()
    (out / "1.jpg").write_bytes(posters[1])  # complete: kept, no request
    (out / "2.jpg").write_bytes(posters[2][: len(posters[2]) // 2])  # not genrecls's: reported, never replaced
    (out / ".3.jpg.part").write_bytes(posters[3][:100])  # what a killed run leaves
    (out / REPORT_NAME).write_text("id,url,reason\nold,http://x/,stale\n")
    table = write_table(tmp_path / "MovieGenre.csv", [(str(n), url(f"/poster/{n}")) for n in (1, 2, 3)])

    summary = download_posters(table, out, **{**FAST, "progress": True})

    assert (summary.downloaded, summary.skipped, summary.failed) == (1, 1, 1)
    assert summary.report == out / REPORT_NAME
    assert dict(server.hits) == {"/poster/3": 1}
    assert sorted(os.listdir(out)) == ["1.jpg", "2.jpg", "3.jpg", REPORT_NAME]  # .part gone
    assert (out / "2.jpg").read_bytes() == posters[2][: len(posters[2]) // 2]
    for n in (1, 3):
        assert (out / f"{n}.jpg").read_bytes() == posters[n]
    [failure] = read_report(out)  # the stale report was replaced
    assert failure["id"] == "2" and "did not write" in failure["reason"] and "move it away" in failure["reason"]
    err = capsys.readouterr().err
    assert "posters 3/3: 1 downloaded, 1 skipped, 1 failed" in err

    (out / "2.jpg").unlink()  # the user moved it away
    again = download_posters(table, out, **FAST)
    assert (again.downloaded, again.skipped, again.failed) == (1, 2, 0)
    assert (out / "2.jpg").read_bytes() == posters[2]
    assert sum(server.hits.values()) == 2  # the rerun asked only for the missing poster
    assert capsys.readouterr().err == ""  # progress=False is silent


@pytest.mark.integration
def test_rate_limit_per_host(server, tmp_path):
    rows = [(str(n), server.url(f"/poster/{n}")) for n in range(1, 7)]
    table = write_table(tmp_path / "MovieGenre.csv", rows)
    start = time.monotonic()
    summary = download_posters(table, tmp_path / "posters", workers=6, rate=5, **FAST)
    elapsed = time.monotonic() - start
    assert summary.downloaded == 6
    # Six requests at five per second: the last starts a second after the first.
    times = sorted(t for ts in server.times.values() for t in ts)
    assert len(times) == 6 and times[-1] - times[0] >= 0.9
    assert elapsed >= 0.9


def test_rate_limiter_keeps_hosts_apart():
    limiter = RateLimiter(rate=2)  # one request per 0.5 s to each host
    start = time.monotonic()
    limiter.wait("a.example")
    limiter.wait("b.example")
    assert time.monotonic() - start < 0.25  # a first request to each host never waits
    limiter.wait("a.example")
    assert time.monotonic() - start >= 0.45
    assert RateLimiter(None).interval == 0.0


def test_bad_input_says_what_to_do(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(GenreclsError, match="does not exist"):
        download_posters(tmp_path / "missing.csv", out, progress=False)

    table = tmp_path / "urls.csv"
    table.write_text("id,link\n7,ftp://127.0.0.1/7.jpg\n")
    with pytest.raises(GenreclsError, match="--url-column") as raised:
        download_posters(table, out, progress=False)
    assert "'imdbId', 'Poster'" in str(raised.value) and "'id', 'link'" in str(raised.value)
    assert not out.exists()  # nothing created for a run that never started

    # The same table with its columns named: the row fails without a request.
    summary = download_posters(table, out, url_column="link", id_column="id", progress=False)
    assert [tuple(f) for f in summary.failures] == [("7", "ftp://127.0.0.1/7.jpg", NOT_HTTP)]

    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(GenreclsError, match="empty"):
        download_posters(tmp_path / "empty.csv", out, progress=False)
    with pytest.raises(GenreclsError, match="--workers"):
        download_posters(table, out, workers=0, progress=False)
    with pytest.raises(GenreclsError, match="--rate"):
        download_posters(table, out, rate=0, progress=False)
    with pytest.raises(GenreclsError, match="is a file"):
        download_posters(table, table, url_column="link", id_column="id", progress=False)

    notes = tmp_path / "notes"  # a download_report.csv that genrecls did not write
    notes.mkdir()
    (notes / REPORT_NAME).write_text("my notes\n")
    with pytest.raises(GenreclsError, match="not written by genrecls"):
        download_posters(table, notes, url_column="link", id_column="id", progress=False)
    assert (notes / REPORT_NAME).read_text() == "my notes\n"


@pytest.mark.integration
def test_deadline_bounds_a_request_however_slowly_its_bytes_come(server, tmp_path):
    url = server.url
    rows = [("body", url("/trickle")), ("head", url("/trickle-head")), ("1", url("/poster/1"))]
    out, summary, elapsed = timed_download(tmp_path, rows, workers=3, **{**FAST, "deadline": 1.0})

    # Without the deadline: about an hour for the body, as each read is quick.
    assert elapsed < 3
    reasons = {row["id"]: row["reason"] for row in read_report(out)}
    assert reasons == {"body": "deadline exceeded (1 s)", "head": "deadline exceeded (1 s)"}
    assert server.hits["/trickle"] == server.hits["/trickle-head"] == 1  # not retried
    assert summary.downloaded == 1 and sorted(os.listdir(out)) == ["1.jpg", REPORT_NAME]  # no .part


@pytest.mark.integration
def test_ctrl_c_stops_at_once_and_leaves_no_part_file(server, tmp_path):
    url = server.url
    # Two workers: one mid-body on a silent server, one waiting out Retry-After;
    # the rest queued.
    rows = [("hang", url("/hang")), ("busy", url("/unavailable"))]
    rows += [(str(n), url(f"/hang/{n}")) for n in range(10)]
    table = write_table(tmp_path / "MovieGenre.csv", rows)
    out = tmp_path / "posters"
    parts_before = []

    def ctrl_c():
        parts_before.extend(p.name for p in out.glob(".*.part"))
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # as a terminal sends it

    # Python only turns SIGINT into KeyboardInterrupt when it was not ignored at start-up, and a
    # shell's background job starts with it ignored: install the handler a terminal session has.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(1.0, ctrl_c)
    start = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        download_posters(table, out, workers=2, timeout=30, retries=3, progress=False)
    elapsed = time.monotonic() - start
    timer.join()
    signal.signal(signal.SIGINT, previous)

    assert parts_before == [".hang.jpg.part"]  # interrupted mid-transfer
    assert elapsed < 3  # not the 30 s read timeout, nor the 60 s back-off
    assert [p.name for p in out.iterdir() if p.suffix == ".part"] == []
    assert server.hits["/hang"] == server.hits["/unavailable"] == 1
    assert sum(server.hits.values()) == 2  # the queued rows never started
    assert read_report(out) == []


def test_rate_limiter_wait_ends_on_stop():
    limiter, stop = RateLimiter(rate=0.01), threading.Event()  # a request per 100 s
    limiter.wait("a.example", stop)
    stop.set()
    start = time.monotonic()
    limiter.wait("a.example", stop)
    assert time.monotonic() - start < 0.5


@pytest.mark.integration
def test_cleanup_removes_only_the_part_files_of_the_tables_ids(server, tmp_path):
    out = tmp_path / "posters"
    out.mkdir()
    mine = out / ".mine.jpg.part"  # the user's, with the shape of a part file
    mine.write_bytes(b"notes \x00\xff")
    (out / ".2.jpg.part").write_bytes(b"left by a killed run")
    (out / ".9.jpg.part").write_bytes(b"left by a killed run")
    table = write_table(tmp_path / "MovieGenre.csv", [("2", server.url("/poster/2")), ("9", "")])

    summary = download_posters(table, out, **FAST)

    assert summary.downloaded == 1 and summary.failed == 1
    assert mine.read_bytes() == b"notes \x00\xff"
    assert sorted(os.listdir(out)) == [".mine.jpg.part", "2.jpg", REPORT_NAME]


@pytest.mark.integration
def test_replies_refused_for_what_they_say(server, tmp_path):
    url = server.url
    rows = [("loop", url("/loop")), ("huge", url("/huge-declared")), ("html", url("/html"))]
    out, summary, elapsed = timed_download(tmp_path, rows, max_bytes=40_000, **{**FAST, "timeout": 5})

    reasons = {row["id"]: row["reason"] for row in read_report(out)}
    assert summary.failed == 3 and summary.downloaded == 0
    assert reasons["loop"] == REDIRECT_LOOP  # not "HTTP 302"
    assert 2 <= server.hits["/loop"] <= 11  # urllib's limits; not retried
    # Refused on its Content-Length: reading would have waited out the timeout.
    assert reasons["huge"] == "too large (over 40,000 bytes)" and elapsed < 2
    assert server.hits["/huge-declared"] == 1
    assert reasons["html"] == "not an image (text/html)"
    assert sorted(os.listdir(out)) == [REPORT_NAME]


def test_options_refuse_nan_infinity_and_negatives(tmp_path):
    table = write_table(tmp_path / "MovieGenre.csv", [("1", "")])
    out = tmp_path / "out"
    for option, value in [("timeout", math.nan), ("deadline", math.nan), ("deadline", -1.0),
                          ("deadline", math.inf), ("backoff", math.nan), ("rate", math.inf)]:
        with pytest.raises(GenreclsError, match=f"{option}"):
            download_posters(table, out, progress=False, **{option: value})
    assert not out.exists()


def run_cli(argv) -> int:
    """cli.main's status; a parser error may exit (SystemExit) or return."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_cli_download_refuses_bad_values_in_one_line(tmp_path, capsys):
    table = write_table(tmp_path / "MovieGenre.csv", [("1", "")])
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")

    assert run_cli(["download", str(table), "--out", str(a_file)]) == 1
    err = capsys.readouterr().err
    assert err == f"genrecls: error: {a_file} is a file; pass a folder to download the posters into\n"
    assert a_file.read_text() == "mine"

    out = tmp_path / "out"
    for option, value in [("--timeout", "nan"), ("--max-mb", "nan"), ("--max-mb", "inf"),
                          ("--deadline", "nan"), ("--deadline", "-1"), ("--deadline", "inf")]:
        assert run_cli(["download", str(table), "--out", str(out), option, value]) not in (0, None)
        err = capsys.readouterr().err
        assert option in err and value in err and "Traceback" not in err
    assert not out.exists()
