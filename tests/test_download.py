"""Download against a local HTTP server on 127.0.0.1 that serves fixture archives."""

import hashlib
import http.server
import io
import threading
import time
import zipfile
from pathlib import Path

import pytest

from metaselector.data.download import download_dataset, download_file, extraction_problem
from metaselector.data.registry import DatasetInfo, RemoteFile
from metaselector.errors import ChecksumError, DownloadError

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("ml-1m/ratings.dat", "1::1::5::978300760\n" * 2000)
        zipped.writestr("ml-1m/README", "fixture")
    return buffer.getvalue()


class Server:
    """Serves `files`; `truncate` cuts the first response for a name short (a dropped connection)."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.truncate, self.requests = files, set(), []
        self.redirects: dict[str, str] = {}  # name -> the path it redirects to
        self.trickle = 0.0  # seconds between single bytes: a server that never quite stops
        self.stall = 0.0  # seconds of silence after the headers
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                outer.requests.append((name, self.headers.get("Range")))
                if name in outer.redirects:
                    self.send_response(302)
                    self.send_header("Location", outer.redirects[name])
                    self.end_headers()
                    return
                body = outer.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if outer.trickle or outer.stall:
                    time.sleep(outer.stall)
                    try:
                        for byte in body[start:start + 50]:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(outer.trickle)
                    except OSError:  # the client gave up, as it should
                        pass
                    return
                if name in outer.truncate:
                    outer.truncate.discard(name)
                    self.wfile.write(body[start:start + len(body) // 3])
                    return  # the client sees fewer bytes than promised
                self.wfile.write(body[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def server():
    body = _archive()
    s = Server({"ml-1m.zip": body})
    s.body = body
    yield s
    s.close()


def _remote(body: bytes, url: str, sha: str | None = None) -> RemoteFile:
    return RemoteFile(url=f"{url}/ml-1m.zip", filename="ml-1m.zip",
                      sha256=sha or hashlib.sha256(body).hexdigest())


def test_good_download_verifies_and_extracts(server, tmp_path):
    info = DatasetInfo("movielens-1m", "", "", "", "", files=(_remote(server.body, server.url),))
    download_dataset(info, tmp_path, progress=False, log=lambda m: None)
    assert (tmp_path / "ml-1m.zip").read_bytes() == server.body
    assert (tmp_path / "ml-1m" / "ratings.dat").is_file()


def test_truncated_download_resumes_with_range(server, tmp_path):
    server.truncate.add("ml-1m.zip")
    remote = _remote(server.body, server.url)
    with pytest.raises(DownloadError, match="resume"):
        download_file(remote, tmp_path, progress=False)
    partial = tmp_path / "ml-1m.zip.part"
    assert 0 < partial.stat().st_size < len(server.body)
    assert not (tmp_path / "ml-1m.zip").exists()
    path = download_file(remote, tmp_path, progress=False)
    assert path.read_bytes() == server.body
    assert server.requests[-1][1] == f"bytes={len(server.body) // 3}-"


def test_checksum_mismatch_is_refused_and_nothing_kept(server, tmp_path):
    (tmp_path / "keep.txt").write_text("already here")
    remote = _remote(server.body, server.url, sha="0" * 64)
    with pytest.raises(ChecksumError, match="sha256"):
        download_file(remote, tmp_path, progress=False)
    assert not (tmp_path / "ml-1m.zip").exists() and not (tmp_path / "ml-1m.zip.part").exists()
    assert (tmp_path / "keep.txt").read_text() == "already here"


def test_missing_file_is_a_clear_error(server, tmp_path):
    remote = RemoteFile(url=f"{server.url}/nope.zip", filename="nope.zip", sha256="0" * 64)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(remote, tmp_path, progress=False)


def test_cli_download_through_a_mirror(server, tmp_path, monkeypatch):
    """The real registry entry (its real checksum) refuses the fixture archive served as ml-1m.zip."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "metaselector", "download", "movielens-1m", "--mirror",
                             server.url, "--data-dir", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "sha256" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "ml-1m.zip").exists()


def test_a_trickling_server_is_given_up_on_by_the_deadline(server, tmp_path):
    server.trickle = 0.2
    start = time.monotonic()
    with pytest.raises(DownloadError, match="not complete within"):
        download_file(_remote(server.body, server.url), tmp_path, progress=False, deadline_seconds=1.0)
    assert time.monotonic() - start < 5
    assert (tmp_path / "ml-1m.zip.part").exists()  # kept, to resume


def test_a_stalled_server_is_given_up_on_by_the_timeout(server, tmp_path):
    server.stall = 3.0
    start = time.monotonic()
    with pytest.raises(DownloadError, match="connection lost|timed out"):
        download_file(_remote(server.body, server.url), tmp_path, progress=False, timeout=0.5)
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("body,needle", [(b"PK\x03\x04 not really a zip", "not a valid zip"),
                                         (None, "lacks ml-1m/ratings.dat, ml-1m/users.dat")])
def test_a_bad_archive_is_not_kept(server, tmp_path, body, needle):
    if body is None:  # a valid zip without the expected files
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zipped:
            zipped.writestr("ratings.dat", "1::1::5::978300760\n")
        body = buffer.getvalue()
    server.files["ml-1m.zip"] = body
    remote = RemoteFile(url=f"{server.url}/ml-1m.zip", filename="ml-1m.zip")  # no published checksum
    info = DatasetInfo("movielens-1m", "", "", "", "", files=(remote,),
                       required=("ml-1m/ratings.dat", "ml-1m/users.dat"))
    for _ in range(2):  # the same clean error every time, never a leftover
        with pytest.raises(DownloadError, match=needle):
            download_dataset(info, tmp_path, progress=False, log=lambda m: None)
        assert not (tmp_path / "ml-1m.zip").exists() and not (tmp_path / "ml-1m").exists()


@pytest.mark.parametrize("args,needle", [
    (["download", "movielens-1m", "--mirror", "notaurl"], "mirror 'notaurl'"),
    (["download", "movielens-1m", "--data-dir", "FILE"], "expected a folder"),
    (["inspect", "movielens-1m", "--data-dir", "FILE"], "expected a folder"),
])
def test_odd_locations_are_one_line_errors(tmp_path, args, needle):
    import subprocess
    import sys

    (tmp_path / "FILE").write_text("a file")
    args = [str(tmp_path / "FILE") if a == "FILE" else a for a in args]
    result = subprocess.run([sys.executable, "-m", "metaselector", *args], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_redirect_loop_says_so(server, tmp_path):
    server.redirects.update({"loop.zip": "/again.zip", "again.zip": "/loop.zip"})
    remote = RemoteFile(url=f"{server.url}/loop.zip", filename="ml-1m.zip")
    with pytest.raises(DownloadError, match=r"loop.zip: too many redirects .*HTTP 302 to /(again|loop).zip"):
        download_file(remote, tmp_path, progress=False)
    assert not (tmp_path / "ml-1m.zip").exists()


def test_an_extraction_damaged_later_is_extracted_again_or_refused(server, tmp_path):
    """What extraction wrote is recorded (sizes, SHA-256) and checked on every use: a truncated or
    edited file is extracted again from the verified archive; with no archive to do it from, the
    damaged file is named (here the server is gone too, so the archive cannot be fetched again)."""
    info = DatasetInfo("movielens-1m", "", "", "", "", files=(_remote(server.body, server.url),))
    logged = []
    download_dataset(info, tmp_path, progress=False, log=logged.append)
    ratings = tmp_path / "ml-1m" / "ratings.dat"
    original = ratings.read_bytes()
    for damage in (lambda: ratings.write_bytes(original[:100]),  # truncated
                   lambda: ratings.write_bytes(original.replace(b"::5::", b"::1::", 1))):  # edited, same size
        damage()
        download_dataset(info, tmp_path, progress=False, log=logged.append)
        assert ratings.read_bytes() == original
        assert "changed since it was extracted from ml-1m.zip" in logged[-1]
    assert extraction_problem(tmp_path, "ml-1m.zip") is None
    (tmp_path / "ml-1m.zip").unlink()
    ratings.write_bytes(original[:100])
    server.close()
    with pytest.raises(DownloadError, match="cannot connect"):
        download_dataset(info, tmp_path, progress=False, log=logged.append, timeout=2)
    assert "changed since it was extracted" in extraction_problem(tmp_path, "ml-1m.zip")


def test_a_users_archive_extracted_into_the_cache_is_checked_before_use(tmp_path, monkeypatch):
    """--data-dir holding ml-1m.zip: the cache's extracted copy, damaged later, is extracted again."""
    import shutil

    from metaselector.data.loading import load_dataset

    monkeypatch.setenv("METASELECTOR_HOME", str(tmp_path / "home"))
    folder = tmp_path / "user"
    folder.mkdir()
    shutil.make_archive(str(folder / "ml-1m"), "zip", FIXTURES, "ml-1m")
    first = load_dataset("movielens-1m", folder, use_cache=False, log=lambda m: None)
    (ratings,) = (tmp_path / "home" / "extracted").glob("movielens-1m-*/ml-1m/ratings.dat")
    ratings.write_bytes(ratings.read_bytes()[:200])
    again = load_dataset("movielens-1m", folder, use_cache=False, log=lambda m: None)
    assert len(again.labels) == len(first.labels) and again.sources == first.sources
