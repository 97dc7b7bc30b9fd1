"""Download against a local HTTP server on 127.0.0.1 that serves fixture archives."""

import hashlib
import http.server
import io
import threading
import zipfile

import pytest

from metaselector.data.download import download_dataset, download_file
from metaselector.data.registry import DatasetInfo, RemoteFile
from metaselector.errors import ChecksumError, DownloadError


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
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                outer.requests.append((name, self.headers.get("Range")))
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
