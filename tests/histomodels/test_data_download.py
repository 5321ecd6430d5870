"""PCam download against a real HTTP server on 127.0.0.1: resume, checksums, CLI."""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import names_the_file_in_the_way, unboxed
from typer.testing import CliRunner

from histomodels.cli import app
from histomodels.data import open_dataset
from histomodels.data.download import DownloadError, download_file, download_pcam, pcam_names
from histomodels.synthetic import make_patches


class Server:
    """Serves ``files``; can cut the connection mid-body or ignore Range, and logs requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}  # name → bytes sent before cutting (once)
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.split("?")[0].lstrip("/")
                rng = self.headers.get("Range")
                server.requests.append((name, rng))
                if name not in server.files:
                    self.send_error(404)
                    return
                data = server.files[name]
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.drop_after.pop(name, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as s:
        yield s


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_resume_after_dropped_connection(tmp_path: Path, server: Server) -> None:
    data = np.random.default_rng(0).bytes(3_000_000)
    server.files["big.bin"] = data
    server.drop_after["big.bin"] = 1_200_000
    res = download_file(f"{server.url}/big.bin", tmp_path / "big.bin", _md5(data), backoff=0)
    assert res.status == "resumed"
    assert (tmp_path / "big.bin").read_bytes() == data
    assert not (tmp_path / "big.bin.part").exists()
    assert len(server.requests) == 2
    first, second = server.requests
    assert second[1] is not None
    assert first[1] is None and second[1].startswith("bytes=")
    resumed_at = int(second[1].split("=")[1].rstrip("-"))
    assert 0 < resumed_at <= 1_200_000
    assert res.bytes_fetched == len(data)  # nothing fetched twice
    # second run: the file is there and verified, no request made
    again = download_file(f"{server.url}/big.bin", tmp_path / "big.bin", _md5(data))
    assert again.status == "present" and len(server.requests) == 2


def test_resume_from_part_file_of_an_earlier_run(tmp_path: Path, server: Server) -> None:
    data = np.random.default_rng(1).bytes(50_000)
    server.files["f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data[:20_000])
    res = download_file(f"{server.url}/f.bin", tmp_path / "f.bin", _md5(data))
    assert res.status == "resumed" and res.bytes_fetched == 30_000
    assert server.requests == [("f.bin", "bytes=20000-")]
    assert (tmp_path / "f.bin").read_bytes() == data


def test_server_ignoring_range_restarts_cleanly(tmp_path: Path, server: Server) -> None:
    data = np.random.default_rng(2).bytes(40_000)
    server.files["f.bin"] = data
    server.ignore_range = True
    (tmp_path / "f.bin.part").write_bytes(b"x" * 10_000)  # stale bytes must not survive
    download_file(f"{server.url}/f.bin", tmp_path / "f.bin", _md5(data))
    assert (tmp_path / "f.bin").read_bytes() == data


def test_checksum_mismatch_fails_loudly_and_keeps_nothing(tmp_path: Path, server: Server) -> None:
    server.files["f.bin"] = b"tampered content"
    with pytest.raises(DownloadError, match=r"f\.bin: checksum mismatch .* expected 0{32}"):
        download_file(f"{server.url}/f.bin", tmp_path / "f.bin", "0" * 32)
    assert not list(tmp_path.iterdir())


def test_http_error_and_gave_up(tmp_path: Path, server: Server) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{server.url}/absent", tmp_path / "absent", None)
    with pytest.raises(DownloadError, match="failed after 1 retries"):
        download_file("http://127.0.0.1:9/x", tmp_path / "x", None, retries=1, backoff=0)


def test_a_download_that_gets_nothing_leaves_nothing(tmp_path: Path, server: Server) -> None:
    """No server (or a 404) on the first file: the line said 'run again to resume from
    X.part', a file that was never written, and the empty --dest folder stayed behind."""
    import socket

    with socket.socket() as sock:  # a port with no server: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dest = tmp_path / "new" / "pcam"
    args = ["data", "download", "pcam", "--dest", str(dest), "--split", "valid", "--retries", "0"]
    result = CliRunner().invoke(app, [*args, "--url-template", f"http://127.0.0.1:{port}/{{name}}"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("nothing was received; run again to retry")
    assert ".part" not in lines[0]
    assert list(tmp_path.iterdir()) == []
    result = CliRunner().invoke(app, [*args, "--url-template", server.url + "/{name}"])
    assert result.exit_code == 1 and "HTTP 404" in result.stderr
    assert list(tmp_path.iterdir()) == []
    # a folder that was there stays, as does a part file with bytes in it
    dest.mkdir(parents=True)
    part = dest / "camelyonpatch_level_2_split_valid_x.h5.gz.part"
    part.write_bytes(b"first bytes")
    result = CliRunner().invoke(app, [*args, "--url-template", f"http://127.0.0.1:{port}/{{name}}"])
    assert result.exit_code == 1 and f"run again to resume from {part}" in unboxed(result.stderr)
    assert part.read_bytes() == b"first bytes"


def _pcam_gz(x: np.ndarray, y: np.ndarray) -> dict[str, bytes]:
    out = {}
    for xy, arr in (("x", x), ("y", y.reshape(-1, 1, 1, 1).astype(np.uint8))):
        buf = io.BytesIO()
        with h5py.File(buf, "w") as f:
            f.create_dataset(xy, data=arr)
        out[f"camelyonpatch_level_2_split_valid_{xy}.h5.gz"] = gzip.compress(buf.getvalue())
    out["camelyonpatch_level_2_split_valid_meta.csv"] = b"coord_y,coord_x\n"
    return out


def test_cli_download_pcam_then_read_it(tmp_path: Path, server: Server) -> None:
    x, y = make_patches(12, seed=4)
    server.files.update(_pcam_gz(x, y))
    server.drop_after["camelyonpatch_level_2_split_valid_x.h5.gz"] = 5_000
    sums = tmp_path / "sums.md5"
    sums.write_text("".join(f"{_md5(d)}  {n}\n" for n, d in server.files.items()))
    dest = tmp_path / "pcam"
    args = ["data", "download", "pcam", "--dest", str(dest), "--split", "valid", "--gunzip"]
    args += ["--url-template", server.url + "/{name}", "--checksums", str(sums)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "resumed" in result.output
    ds = open_dataset(dest, split="valid")
    assert len(ds) == 12 and np.array_equal(ds[4][0], x[4]) and ds[4][1] == y[4]
    assert (dest / "camelyonpatch_level_2_split_valid_x.h5").exists()
    # the built-in (real Zenodo) checksums reject these stand-in files: exit 1, one line
    result = CliRunner().invoke(
        app,
        [
            "data",
            "download",
            "pcam",
            "--dest",
            str(tmp_path / "other"),
            "--split",
            "valid",
            "--url-template",
            server.url + "/{name}",
        ],
    )
    assert result.exit_code == 1
    assert "checksum mismatch" in result.output
    assert not list((tmp_path / "other").glob("*.gz"))


def test_names_and_bad_split() -> None:
    assert pcam_names(["test"], meta=False) == [
        "camelyonpatch_level_2_split_test_x.h5.gz",
        "camelyonpatch_level_2_split_test_y.h5.gz",
    ]
    with pytest.raises(DownloadError, match="unknown PCam split 'dev'"):
        pcam_names(["dev"])
    result = CliRunner().invoke(app, ["data", "download", "mnist", "--dest", "x"])
    said = unboxed(result.output)
    assert result.exit_code == 2 and "'mnist' is not one of 'pcam'" in said, result.output


def test_mirror_from_environment(tmp_path: Path, server: Server, monkeypatch) -> None:
    x, y = make_patches(4, seed=6)
    server.files.update(_pcam_gz(x, y))
    monkeypatch.setenv("HISTOMODELS_PCAM_URL", server.url + "/{name}")
    sums = {n: _md5(d) for n, d in server.files.items()}
    results = download_pcam(tmp_path, ["valid"], checksums=sums)
    assert [r.status for r in results] == ["downloaded"] * 3
    assert {name for name, _ in server.requests} == set(server.files)
    again = download_pcam(tmp_path, ["valid"], checksums=sums)
    assert [r.status for r in again] == ["present"] * 3


def test_the_url_template_fills_in_name_only() -> None:
    """``--url-template`` and ``HISTOMODELS_PCAM_URL`` share this check (a field other than
    {name} was str.format's KeyError traceback)."""
    from histomodels.data.download import check_url_template

    assert check_url_template("https://mirror/{name}?x=1") == "https://mirror/{name}?x=1"
    for bad, said in [
        ("https://mirror/pcam", "has no {name} placeholder"),
        ("https://mirror/{{name}}", "has no {name} placeholder"),
        ("https://mirror/{split}/{name}", "has {split}; only {name} is filled in"),
        ("https://mirror/{}", "has {}; only {name}"),
        ("https://mirror/{name", "expected '}'"),
    ]:
        with pytest.raises(DownloadError, match=re.escape(said)):
            check_url_template(bad)


def test_download_under_a_file_names_the_file(tmp_path: Path) -> None:
    """``download_file(url, a/f.bin)`` (``a`` a file) made its folder with a plain mkdir (see
    conftest.names_the_file_in_the_way)."""
    names_the_file_in_the_way(  # refused before any request
        tmp_path, lambda a: download_file("http://127.0.0.1:9/f.bin", a / "f.bin", None)
    )
