"""Data: download against a local HTTP server, safe extraction, check, both layouts, cached vs PIL."""
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import cache
import dataset
from conftest import make_ab, make_dataset, train

LAYOUT = {"train": (3, (64, 32)), "val": (2, (64, 32))}


def maps_archive(extra=()) -> bytes:
    """A small .tar.gz in the maps layout: maps/train/*.jpg and maps/val/*.jpg, 64x32 each."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for split, (n, _) in LAYOUT.items():
            for i in range(n):
                img = io.BytesIO()
                Image.fromarray(np.full((32, 64, 3), 40 * i, np.uint8)).save(img, "JPEG")
                info = tarfile.TarInfo(f"maps/{split}/{i + 1}.jpg")
                info.size = len(img.getvalue())
                tar.addfile(info, io.BytesIO(img.getvalue()))
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


class Server:
    """A one-file HTTP server on 127.0.0.1. mode: ok | drop (first reply breaks off halfway) |
    norange (never honours Range; the first reply breaks off) | missing (404) | as-is."""

    def __init__(self, body: bytes, mode="ok"):
        self.body, self.mode, self.ranges, self.count = body, mode, [], 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.count += 1
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                if outer.mode == "missing":
                    self.send_error(404, "Not Found")
                    return
                start = int(rng[6:-1]) if rng and outer.mode != "norange" else 0
                body = outer.body[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(outer.body) - 1}/{len(outer.body)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.mode in ("drop", "norange") and outer.count == 1:
                    self.wfile.write(body[: len(body) // 2])  # then the connection drops
                    self.wfile.flush()
                    self.connection.close()
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/maps.tar.gz"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def download(root, url, **kw):
    return dataset.download_dataset("maps", root, url=url, layout=LAYOUT, backoff=0.01, **kw)


def assert_clean(root: Path):
    """No partial dataset, no leftovers that look like one."""
    assert not (root / "maps").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".maps.unpack-")]


@pytest.mark.parametrize("mode", ["ok", "drop", "norange"])
def test_download_clean_resumed_and_without_range(tmp_path, mode):
    body = maps_archive()
    with Server(body, mode) as server:
        target = download(tmp_path, server.url)
    assert sorted(p.name for p in (target / "train").iterdir()) == ["1.jpg", "2.jpg", "3.jpg"]
    assert sorted(os.listdir(tmp_path)) == ["maps"]  # archive and .part removed
    if mode == "drop":
        assert server.ranges[0] is None and server.ranges[1].startswith("bytes=") and server.ranges[1] != "bytes=0-"
    if mode == "norange":
        assert server.count == 2  # asked with Range, got the whole file, started over


def test_404_is_explained_and_a_rerun_succeeds(tmp_path):
    with Server(b"", "missing") as server:
        with pytest.raises(dataset.DataError) as e:
            download(tmp_path, server.url)
    msg = str(e.value)
    assert server.url in msg and "HTTP 404" in msg and "--archive PATH" in msg and server.count == 1
    assert_clean(tmp_path)
    with Server(maps_archive()) as server:
        download(tmp_path, server.url)
    assert (tmp_path / "maps" / "val" / "2.jpg").is_file()


def test_unreachable_server_names_url_and_reason(tmp_path):
    with pytest.raises(dataset.DataError) as e:
        dataset.download_dataset("maps", tmp_path, url="http://127.0.0.1:9/maps.tar.gz", retries=1, backoff=0.01)
    assert "127.0.0.1:9" in str(e.value) and "after 2 tries" in str(e.value)
    assert_clean(tmp_path)


@pytest.mark.parametrize("kind", ["truncated", "corrupt"])
def test_broken_archives_leave_nothing_and_rerun_succeeds(tmp_path, kind):
    good = maps_archive()
    body = good[: len(good) * 2 // 3] if kind == "truncated" else b"\x1f\x8b" + os.urandom(4000)
    with Server(body) as server:
        with pytest.raises(dataset.DataError, match="not a complete gzip tar archive"):
            download(tmp_path, server.url)
    assert_clean(tmp_path)
    assert not (tmp_path / "maps.tar.gz").exists()
    with Server(good) as server:
        download(tmp_path, server.url)


def member(name, kind=tarfile.REGTYPE, data=b"x", link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


@pytest.mark.parametrize("bad", [
    member("maps/../../evil.txt"),
    member("/tmp/sat2map-evil-absolute.txt"),
    member("maps/train/link.jpg", tarfile.SYMTYPE, link="/etc/passwd"),
    member("maps/train/hard.jpg", tarfile.LNKTYPE, link="maps/train/1.jpg"),
    member("maps/dev", tarfile.CHRTYPE),
])
def test_unsafe_members_are_refused(tmp_path, bad):
    root = tmp_path / "deep" / "root"
    with Server(maps_archive(extra=[bad])) as server:
        with pytest.raises(dataset.DataError, match="refused, unsafe archive members"):
            download(root, server.url)
    assert_clean(root)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/sat2map-evil-absolute.txt").exists()


def test_local_archive_sha256_and_layout(tmp_path):
    archive = tmp_path / "maps.tar.gz"
    archive.write_bytes(maps_archive())
    with pytest.raises(dataset.DataError, match="differs from --sha256"):
        dataset.download_dataset("maps", tmp_path / "a", archive=archive, sha256="0" * 64, layout=LAYOUT)
    assert archive.exists()  # the user's own file is never deleted
    wrong = {"train": (1096, (1200, 600)), "val": (2, (64, 32))}
    with pytest.raises(dataset.DataError) as e:
        dataset.download_dataset("maps", tmp_path / "a", archive=archive, layout=wrong)
    assert "train/ has 3 images, expected 1096" in str(e.value) and "is 64x32, expected 1200x600" in str(e.value)
    assert_clean(tmp_path / "a")
    digest = dataset.sha256sum(archive)
    dataset.download_dataset("maps", tmp_path / "a", archive=archive, sha256=digest, layout=LAYOUT)
    assert len(list((tmp_path / "a" / "maps" / "train").iterdir())) == 3


def test_train_downloads_missing_dataset(tmp_path, monkeypatch):
    """train.py --data-root data/maps fetches the set when the folder is missing."""
    monkeypatch.setitem(dataset.LAYOUTS, "maps", LAYOUT)
    with Server(maps_archive()) as server:
        monkeypatch.setattr(dataset, "BASE_URL", server.url.rsplit("/", 1)[0] + "/")
        ckpt = train("--data-root", tmp_path / "data" / "maps", "--run-dir", tmp_path / "r", "--max-steps", 2)
    assert ckpt["step"] == 2 and ckpt["data"]["pairs"] == 3


# ----------------------------------------------------------------------------------------------------
# check, --skip-bad, layouts, modes


def plant_bad(root: Path) -> set:
    (root / "train" / "zero.png").write_bytes(b"")
    (root / "train" / "text.jpg").write_text("not a jpeg")
    make_ab(root / "train" / "odd.png", w=129)
    make_ab(root / "train" / "tiny.png", w=20, h=10)
    make_ab(root / "val" / "whole.jpg", w=256, h=128)
    (root / "val" / "cut.jpg").write_bytes((root / "val" / "whole.jpg").read_bytes()[:1500])
    Image.fromarray(np.zeros((8, 64), np.float32)).save(root / "train" / "float.tiff")  # wrong extension: ignored
    return {root / "train" / n for n in ("zero.png", "text.jpg", "odd.png", "tiny.png")} | {root / "val" / "cut.jpg"}


def test_check_finds_every_planted_bad_file(tmp_path, capsys):
    root = make_dataset(tmp_path / "d", n_train=4, n_val=2)
    bad = plant_bad(root)
    assert dataset.check(root) == len(bad)
    out = capsys.readouterr().out
    for path in bad:
        assert str(path) in out
    assert "summary: 5 bad file(s)" in out
    assert dataset.check(make_dataset(tmp_path / "good")) == 0


def test_skip_bad_trains_on_the_good_pairs(tmp_path, capsys):
    root = make_dataset(tmp_path / "d", n_train=4, n_val=2)
    plant_bad(root)
    ckpt = train("--data-root", root, "--run-dir", tmp_path / "r", "--max-steps", 2, "--skip-bad")
    assert ckpt["data"]["pairs"] == 4 and ckpt["step"] == 2
    assert "skipping 4 bad pair(s)" in capsys.readouterr().err


def split_into_a_b(root: Path, out: Path):
    for f in sorted((root / "train").iterdir()):
        img = Image.open(f)
        w, h = img.size
        (out / "train" / "A").mkdir(parents=True, exist_ok=True)
        (out / "train" / "B").mkdir(parents=True, exist_ok=True)
        img.crop((0, 0, w // 2, h)).save(out / "train" / "A" / f.name)
        img.crop((w // 2, 0, w, h)).save(out / "train" / "B" / f.name)


def test_both_layouts_give_the_same_tensors_and_combine_roundtrips(tmp_path):
    ab = make_dataset(tmp_path / "ab", n_train=3)
    split_into_a_b(ab, tmp_path / "a_b")
    pairs_ab, _ = dataset.list_pairs(ab, "train")
    pairs_a_b, problems = dataset.list_pairs(tmp_path / "a_b", "train")
    assert not problems and [p.name for p in pairs_ab] == [p.name for p in pairs_a_b]
    assert torch.equal(cache.CachedPairs(pairs_ab, 286).pixels, cache.CachedPairs(pairs_a_b, 286).pixels)
    n = dataset.combine(tmp_path / "a_b" / "train" / "A", tmp_path / "a_b" / "train" / "B", tmp_path / "c" / "train")
    combined, _ = dataset.list_pairs(tmp_path / "c", "train")
    assert n == 3 and torch.equal(cache.CachedPairs(combined, 64).pixels, cache.CachedPairs(pairs_ab, 64).pixels)


def test_unmatched_a_b_names_are_reported(tmp_path):
    ab = make_dataset(tmp_path / "ab", n_train=3)
    split_into_a_b(ab, tmp_path / "x")
    os.remove(tmp_path / "x" / "train" / "B" / "001.png")
    make_ab(tmp_path / "x" / "train" / "B" / "extra.png")
    with pytest.raises(dataset.DataError) as e:
        dataset.open_split(tmp_path / "x", "train")
    msg = str(e.value)
    assert f"{tmp_path / 'x' / 'train' / 'A' / '001.png'}: no matching image in" in msg
    assert f"{tmp_path / 'x' / 'train' / 'B' / 'extra.png'}: no matching image in" in msg


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "I;16"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    path = tmp_path / "x.png"
    if mode == "I;16":
        Image.fromarray(np.full((32, 64), 65535, np.uint16)).save(path)
    else:
        make_ab(path, w=64, h=32, mode=mode)
    assert Image.open(path).mode == mode
    x = dataset.decode_pair(dataset.Pair("x", path, None), 32)
    assert x.shape == (6, 32, 32) and x.dtype == torch.uint8
    if mode == "I;16":
        assert x.min() == 255  # full-scale 16-bit white stays white


# ----------------------------------------------------------------------------------------------------
# The cached path against the PIL path


def test_cached_and_pil_paths_agree_exactly(tmp_path):
    root = make_dataset(tmp_path / "d", n_train=5)
    pairs, _ = dataset.list_pairs(root, "train")
    val_cached = cache.CachedPairs(pairs, 256).pixels
    val_pil = torch.stack([dataset.PILPairs(pairs, 256)[i] for i in range(len(pairs))])
    assert (val_cached.int() - val_pil.int()).abs().max() <= 1  # exact in fact; 1/255 is the spec
    cached, pil = cache.CachedPairs(pairs, 286), dataset.PILPairs(pairs, 286, 256)
    mapped = cache.CachedPairs(pairs, 286, tmp_path / "cache")
    plan = dataset.jitter_plan(len(pairs), seed=3, epoch=1, load=286, crop=256, flip=True)
    expected = torch.stack([pil[tuple(r)] for r in plan])
    assert torch.equal(cached.batch(plan, 256), expected)
    assert mapped.mapped and torch.equal(mapped.batch(plan, 256), expected)


def test_jitter_matches_torchvision_reference():
    """Our crop/flip of the cached resize equals torchvision's PIL transforms with the same parameters."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 1200, 3), dtype=np.uint8))
    halves = [img.crop((0, 0, 600, 600)), img.crop((600, 0, 1200, 600))]
    path = Path(__file__).parent / "_ref.png"
    try:
        img.save(path)
        ours = dataset.crop_flip(dataset.decode_pair(dataset.Pair("r", path, None), 286), 7, 23, True, 256)
    finally:
        path.unlink()
    ref = [TF.hflip(TF.crop(TF.resize(h, [286, 286], TF.InterpolationMode.BICUBIC), 7, 23, 256, 256))
           for h in halves]
    ref = torch.cat([TF.pil_to_tensor(r) for r in ref])
    assert torch.equal(ours, ref)


def test_jitter_statistics_cover_the_paper_range():
    plans = torch.cat([dataset.jitter_plan(1000, 0, e, 286, 256, True) for e in range(20)])
    offsets, flips = plans[:, 1:3], plans[:, 3].float()
    assert offsets.min() == 0 and offsets.max() == 30  # every crop position of 286 -> 256
    assert torch.bincount(offsets.flatten(), minlength=31).min() > 0.8 * offsets.numel() / 31
    assert abs(flips.mean().item() - 0.5) < 0.02  # 20,000 draws: sd 0.0035
    assert sorted(plans[:1000, 0].tolist()) == list(range(1000))  # a permutation per epoch
    assert not torch.equal(plans[:1000, 0], plans[1000:2000, 0])
    assert dataset.jitter_plan(10, 0, 0, 286, 256, False)[:, 3].sum() == 0


def test_disk_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "d", n_train=3)
    pairs, _ = dataset.list_pairs(root, "train")
    first = cache.CachedPairs(pairs, 64, tmp_path / "cache")
    assert first.mapped and len(list((tmp_path / "cache").glob("*.u8"))) == 1
    real_decode = dataset.decode_pair
    monkeypatch.setattr(dataset, "decode_pair", lambda *a: pytest.fail("decoded despite a valid cache"))
    assert torch.equal(cache.CachedPairs(pairs, 64, tmp_path / "cache").pixels, first.pixels)
    monkeypatch.setattr(dataset, "decode_pair", real_decode)
    make_ab(pairs[0].a, seed=42)
    os.utime(pairs[0].a, ns=(1, 1))
    changed = cache.CachedPairs(pairs, 64, tmp_path / "cache")
    assert not torch.equal(changed.pixels[0], first.pixels[0]) and torch.equal(changed.pixels[1], first.pixels[1])
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [changed.path.name]  # the stale cache is gone


def corrupt(path: Path, how: str):
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2],
                      "short tail": data[:-3],
                      "longer": data + b"\0" * 100,
                      "bad marker": data[:-8] + b"XXXXXXXX",
                      "bad length": data[:-16] + (10**12).to_bytes(8, "little") + data[-8:],
                      "bad footer": data[:-16 - 40] + b"{" * 40 + data[-16:],
                      "other key": data.replace(b'"key": "', b'"key": "0', 1)[:-16] + data[-16:],
                      "empty": b""}[how])


@pytest.mark.parametrize("how", ["truncated", "short tail", "longer", "bad marker", "bad length", "bad footer",
                                 "other key", "empty"])
def test_corrupt_mapped_cache_is_rebuilt_with_a_warning(tmp_path, capsys, how):
    root = make_dataset(tmp_path / "d", n_train=3)
    pairs, _ = dataset.list_pairs(root, "train")
    good = cache.CachedPairs(pairs, 64, tmp_path / "cache")
    expected = good.pixels.clone()
    del good
    corrupt(next((tmp_path / "cache").glob("*.u8")), how)
    rebuilt = cache.CachedPairs(pairs, 64, tmp_path / "cache")
    assert torch.equal(rebuilt.pixels, expected)
    err = capsys.readouterr().err
    assert f"warning: {rebuilt.path}: " in err and "rebuilding it" in err


def test_crashed_build_leaves_no_cache_and_its_temp_file_is_cleared(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "d", n_train=3)
    pairs, _ = dataset.list_pairs(root, "train")
    real_decode = dataset.decode_pair
    monkeypatch.setattr(dataset, "decode_pair", lambda p, *a: (_ for _ in ()).throw(KeyboardInterrupt)
                        if p.name == "002" else real_decode(p, *a))
    with pytest.raises(KeyboardInterrupt):
        cache.CachedPairs(pairs, 64, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(dataset, "decode_pair", real_decode)
    # what SIGKILL leaves: a temp file of a process that is gone; a build still running keeps its own
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    host = socket.gethostname()
    stale = tmp_path / "cache" / f".pairs-64-0123456789abcdef.u8.{host}.{dead.pid}.tmp"
    running = tmp_path / "cache" / f".pairs-64-0123456789abcdef.u8.{host}.{os.getpid()}.tmp"
    stale.write_bytes(b"x" * 1000)
    running.write_bytes(b"x")
    cached = cache.CachedPairs(pairs, 64, tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([cached.path.name, running.name])


def test_mapped_cache_remembers_bad_pairs(tmp_path, capsys):
    root = make_dataset(tmp_path / "d", n_train=3)
    bad = root / "train" / "001.png"
    bad.write_bytes(bad.read_bytes()[:200])  # header intact: listing passes, decoding fails
    pairs, _ = dataset.list_pairs(root, "train")
    built = cache.CachedPairs(pairs, 64, tmp_path / "cache", skip_bad=True)
    assert [p.name for p in built.pairs] == ["000", "002"] and len(built) == 2
    assert "skipping 1 bad pair(s)" in capsys.readouterr().err
    with pytest.raises(dataset.DataError) as e:
        cache.CachedPairs(pairs, 64, tmp_path / "cache")  # reused: no decode, same report
    assert f"{bad}: cannot decode" in str(e.value) and "--skip-bad" in str(e.value)
    assert torch.equal(cache.CachedPairs(pairs, 64, tmp_path / "cache", skip_bad=True).pixels, built.pixels)


def test_file_names_that_are_not_utf8(tmp_path):
    root = make_dataset(tmp_path / "d", n_train=2)
    odd = Path(os.fsdecode(os.fsencode(root / "train") + b"/caf\xe9-\xff.png"))  # Latin-1 bytes
    make_ab(odd, seed=7)
    pairs, _ = dataset.list_pairs(root, "train")
    assert odd in [p.a for p in pairs]
    assert len(cache.cache_key(pairs, 64)) == 64
    mapped = cache.CachedPairs(pairs, 64, tmp_path / "cache")
    assert torch.equal(mapped.pixels, cache.CachedPairs(pairs, 64).pixels)
    ckpt = train("--data-root", root, "--run-dir", tmp_path / "r", "--max-steps", 2, "--data-cache", "disk")
    assert ckpt["data"]["pairs"] == 3
