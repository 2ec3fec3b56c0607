"""Downloads: pretrained weights by name (verify, keep, reuse) and failures that end fast and clearly."""
import io
import socket
import threading
import time
import urllib.error

import pytest
import torch

import download
import generator
from cli import InputError
from generator import Generator, init_weights, load_generator
from test_data import Server


def weights_bytes(ngf=8) -> bytes:
    buf = io.BytesIO()
    torch.save({"G": init_weights(Generator(ngf=ngf)).state_dict(), "config": {"ngf": ngf}}, buf)
    return buf.getvalue()


def test_pretrained_by_name_downloads_verifies_and_is_reused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    body = weights_bytes()
    with Server(body) as server:
        monkeypatch.setenv(generator.URL_VARIABLE, server.url.rsplit("/", 1)[0])
        G, config = load_generator("sat2map")
        assert server.count == 1
    assert (tmp_path / "weights" / "sat2map.pth").read_bytes() == body
    assert config["direction"] == "AtoB" and G.down1.conv.out_channels == 8
    again, _ = load_generator("sat2map")  # the server is gone: the kept file serves
    assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(), again.state_dict().values()))
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["sat2map.pth"]


@pytest.mark.parametrize("body", [b"<html><body>Please sign in to the Wi-Fi</body></html>", b""])
def test_a_download_that_is_not_weights_is_never_kept(tmp_path, monkeypatch, body):
    monkeypatch.chdir(tmp_path)
    with Server(body) as server:
        monkeypatch.setenv(generator.URL_VARIABLE, server.url.rsplit("/", 1)[0])
        with pytest.raises(InputError, match="not a pix2pix generator"):
            load_generator("map2sat")
    assert not (tmp_path / "weights").exists()  # nothing poisons the next run, not even an empty folder
    with Server(weights_bytes()) as server:
        monkeypatch.setenv(generator.URL_VARIABLE, server.url.rsplit("/", 1)[0])
        assert load_generator("map2sat")[1]["direction"] == "BtoA"


def test_missing_file_on_the_server_names_the_setting(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Server(b"", "missing") as server:
        monkeypatch.setenv(generator.URL_VARIABLE, server.url.rsplit("/", 1)[0])
        with pytest.raises(InputError) as e:
            load_generator("sat2map")
    assert "HTTP 404" in str(e.value) and generator.URL_VARIABLE in str(e.value)
    assert server.count == 1  # a 404 is not retried


def test_unresolvable_host_fails_at_once(tmp_path, monkeypatch):
    calls = []

    def no_dns(*args, **kwargs):
        calls.append(args[0])
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    start = time.monotonic()
    with pytest.raises(download.DownloadError, match="host not found"):
        download.fetch("http://pix2pix.example.invalid/maps.tar.gz", tmp_path / "x", backoff=5)
    assert time.monotonic() - start < 2 and len(calls) == 1


def silent_server():
    """A 127.0.0.1 server that accepts connections and never answers; returns (listener, url, the
    connections it accepted so far)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held = []
    threading.Thread(target=lambda: [held.append(listener.accept()) for _ in range(8)], daemon=True).start()
    return listener, f"http://127.0.0.1:{listener.getsockname()[1]}/maps.tar.gz", held


def test_silent_server_times_out_and_retries_are_announced_and_bounded(tmp_path, capsys):
    listener, url, held = silent_server()
    start = time.monotonic()
    with pytest.raises(download.DownloadError) as e:
        download.fetch(url, tmp_path / "x", timeout=0.5, retries=10, backoff=0.2, max_wait=1.5)
    elapsed = time.monotonic() - start
    listener.close()
    assert "timed out" in str(e.value) and elapsed < 6
    err = capsys.readouterr().err
    assert "timed out; retry 1 of 10" in err
    assert "retry 10 of 10" not in err  # the wait bound stopped it early


def test_a_server_that_never_answers_is_given_up_after_two_tries(tmp_path, capsys):
    listener, url, held = silent_server()
    start = time.monotonic()
    with pytest.raises(download.DownloadError, match="sent nothing within 0.5 s on two tries in a row"):
        download.fetch(url, tmp_path / "x", timeout=0.5)  # the default retries and backoff: 1 s, then 2 s, ...
    elapsed = time.monotonic() - start
    listener.close()
    assert len(held) == 2 and elapsed < 4
    assert "retry 1 of 5" in capsys.readouterr().err


def test_transient_errors_are_retried_then_succeed(tmp_path):
    body = weights_bytes()
    with Server(body, "drop") as server:
        download.fetch(server.url, tmp_path / "w.pt", backoff=0.01)
    assert server.count == 2 and (tmp_path / "w.pt").read_bytes() == body


def test_permanent_errors_are_classified():
    assert download.permanent(urllib.error.HTTPError("u", 404, "Not Found", {}, None))
    assert not download.permanent(urllib.error.HTTPError("u", 503, "Busy", {}, None))
    assert download.permanent(urllib.error.URLError(socket.gaierror(-2, "Name or service not known")))
    assert not download.permanent(urllib.error.URLError(ConnectionRefusedError(111, "refused")))
