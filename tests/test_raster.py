"""The raster path: GeoTIFF in and out, bands and stretch, nodata, windowed = whole, bounded memory.
predict.py runs in this process, as its command line runs it; only the memory test starts processes.

    python -m pytest -q tests/test_raster.py
"""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_origin  # noqa: E402

import backends  # noqa: E402
import bands  # noqa: E402
import bench_raster  # noqa: E402
import cog  # noqa: E402
import predict  # noqa: E402
import raster  # noqa: E402
import tiles  # noqa: E402
from conftest import ROOT, run_main  # noqa: E402
from generator import Generator, init_weights, load_generator  # noqa: E402

CRS = "EPSG:32633"
TRANSFORM = from_origin(500000, 4000000, 0.5, 0.5)


def write_tif(path, data, nodata=None, crs=CRS, transform=TRANSFORM, **kw):
    """data (bands, H, W) as a GeoTIFF; returns path."""
    profile = {"driver": "GTiff", "count": data.shape[0], "height": data.shape[1], "width": data.shape[2],
               "dtype": data.dtype.name, "crs": crs, "transform": transform, "nodata": nodata, **kw}
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def scene(h=500, w=600, bands=4, seed=0):
    """uint16 texture with a nodata (0) triangle in the top-left corner; returns (data, nodata mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = 2000 + 1500 * np.sin(xx / 23.0) * np.cos(yy / 31.0)
    data = np.stack([base * (0.5 + 0.25 * b) + rng.normal(0, 200, (h, w)) for b in range(bands)])
    data = np.clip(data, 1, 65535).astype(np.uint16)
    nodata = (xx + yy) < 150
    data[:, nodata] = 0
    return data, nodata


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    torch.save({"G": init_weights(Generator(ngf=8)).state_dict(), "config": {"ngf": 8}}, tmp_path / "G.pt")
    return tmp_path / "G.pt"


def run_predict(*args):
    return run_main(predict.main, "--device", "cpu", *args)


def test_geotiff_keeps_grid_and_masks_nodata(tmp_path, weights):
    data, nodata = scene()
    src = write_tif(tmp_path / "in" / "scene.tif", data, nodata=0)
    r = run_predict("--weights", weights, "--input", src, "--out", tmp_path / "out", "--bands", "3,2,1", "--eval")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scene.tif"]  # no temp file left
    with rasterio.open(tmp_path / "out" / "scene.tif") as out:
        assert out.crs == rasterio.crs.CRS.from_string(CRS) and out.transform == TRANSFORM
        assert (out.width, out.height, out.count) == (600, 500, 3) and set(out.dtypes) == {"uint8"}
        assert out.profile["tiled"] and out.profile.get("compress", "").lower() == "deflate"
        assert out.overviews(1)  # opens fast at any zoom
        mask = out.dataset_mask()
        img = out.read()
    np.testing.assert_array_equal(mask == 0, nodata)
    assert (img[:, nodata] == 0).all() and img[:, ~nodata].std() > 0


@pytest.mark.parametrize("dtype,nodata", [("uint8", 0), ("uint8", 255), ("uint16", 0), ("uint16", 40000),
                                          ("int16", -9999), ("int16", 0), ("uint16", 1.5), ("float32", 7.0)])
def test_validity_from_the_values_equals_gdals_mask(tmp_path, dtype, nodata):
    """The engine decides validity from the values it has read where the mask is only a nodata value;
    that must be GDAL's own mask, nodata values GDAL cannot hold in the type included (all valid)."""
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype) if dtype != "float32" else np.finfo(dtype)
    data = rng.integers(max(info.min, -10000), min(info.max, 50000), (3, 40, 50)).astype(dtype)
    if float(nodata).is_integer() and info.min <= nodata <= info.max:
        data[:, :10, :10] = nodata
        data[1, 30:, 30:] = nodata  # invalid in one band only: the pixel is invalid
    path = write_tif(tmp_path / "n.tif", data, nodata=nodata)
    with rasterio.open(path) as ds:
        win = rasterio.windows.Window(5, 3, 40, 30)
        chosen = [3, 1, 2]
        expected = np.all(ds.read_masks(chosen, window=win) > 0, axis=0)
        got = bands.valid_mask(ds, chosen, win, ds.read(chosen, window=win))
    assert got.dtype == bool and got.shape == (30, 40)
    assert np.array_equal(got, expected)
    assert expected.all() == (not (float(nodata).is_integer() and info.min <= nodata <= info.max))


def test_halve_is_the_mean_of_the_valid_pixels():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 7, 9), dtype=np.uint8)  # odd sizes: the last row and column pair with nothing
    valid = rng.random((7, 9)) > 0.3
    valid[:2, :2] = False  # a cell with no valid pixel
    got, got_valid = cog.halve(pixels * valid, valid)
    assert got.shape == (3, 4, 5) and got_valid.shape == (4, 5)
    for i in range(4):
        for j in range(5):
            v = valid[2 * i:2 * i + 2, 2 * j:2 * j + 2]
            assert got_valid[i, j] == v.any()
            cell = pixels[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2][:, v].astype(float)
            expected = np.floor(cell.mean(1) + 0.5) if v.any() else np.zeros(3)
            assert np.array_equal(got[:, i, j], expected), (i, j)


def gdal_overviews(cog_file, folder):
    """GDAL's own AVERAGE overviews of a COG's full-resolution pixels and mask: [(pixels, mask)] per level."""
    import rasterio.shutil
    folder.mkdir()
    with rasterio.open(cog_file) as ds:
        pixels, mask, size = ds.read(), ds.dataset_mask(), (ds.width, ds.height)
    with cog.create_tiff(folder / "plain.tif", *size, CRS, TRANSFORM, alpha=False) as dst:
        dst.write(pixels)
        dst.write_mask(mask)
    rasterio.shutil.copy(folder / "plain.tif", folder / "gdal.tif", driver="COG", OVERVIEW_RESAMPLING="AVERAGE")
    levels = []
    with rasterio.open(folder / "gdal.tif") as ds:
        count = len(ds.overviews(1))
    for level in range(count):
        with rasterio.open(folder / "gdal.tif", overview_level=level) as ds:
            levels.append((ds.read(), ds.read_masks(1)))
    return levels


def test_sizes_the_levels_do_not_halve_leave_the_overviews_to_gdal(tmp_path, weights):
    """1301 x 301 px: 2x2 cells do not tile the levels, whose sizes GDAL rounds down; GDAL builds them."""
    data, _ = scene(h=301, w=1301)
    src = write_tif(tmp_path / "in" / "scene.tif", data, nodata=0)
    r = run_predict("--weights", weights, "--input", src, "--out", tmp_path / "out", "--bands", "3,2,1", "--eval")
    assert r.returncode == 0, r.stderr
    gdal = gdal_overviews(tmp_path / "out" / "scene.tif", tmp_path / "gdal")
    assert [level[1].shape for level in gdal] == [(150, 650), (75, 325)]
    for level, (pixels, mask) in enumerate(gdal):
        with rasterio.open(tmp_path / "out" / "scene.tif", overview_level=level) as ds:
            assert np.array_equal(ds.read(), pixels) and np.array_equal(ds.read_masks(1), mask)


def test_files_left_by_a_killed_run_do_not_spoil_the_next(tmp_path, weights):
    """A run killed while GDAL copies the COG leaves its working file, overview files and VRT; GDAL,
    asked to write a VRT over the old one, deletes the overview files it names (the new run's)."""
    import contextlib
    data, _ = scene(h=300, w=1100)
    src = write_tif(tmp_path / "in" / "scene.tif", data, nodata=0)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    work = out_dir / ".scene.work.tif"
    with contextlib.ExitStack() as files:
        sink = cog.open_sink(files, work, 1100, 300, CRS, TRANSFORM, overviews=True)
        sink.write_uint8(0, 0, np.zeros((3, 300, 1100), np.uint8), np.ones((300, 1100), bool))
        sink.finish()
    cog.with_overviews(work, work.with_suffix(".vrt"))
    assert len(list(out_dir.iterdir())) == 4  # work, 2 overview files, VRT
    r = run_predict("--weights", weights, "--input", src, "--out", out_dir, "--bands", "3,2,1", "--eval")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["scene.tif"]
    with rasterio.open(out_dir / "scene.tif") as ds:
        assert ds.overviews(1) == [2, 4] and ds.read().std() > 0


def test_overviews_are_the_sinks_whether_in_blocks_or_whole(tmp_path, weights, monkeypatch):
    """The COG's overviews are 2x2 means of the valid pixels, level after level: GDAL's AVERAGE
    overviews pixel for pixel, the same whether the engine writes column blocks from a writer thread
    or the whole width; and they are the ones the sink built beside the network: a sink made to build
    other overviews changes them."""
    data, _ = scene(h=300, w=1100)
    src = write_tif(tmp_path / "in" / "scene.tif", data, nodata=0)
    outs = []
    for block, pipeline in ((256, "on"), (4096, "off")):
        r = run_predict("--weights", weights, "--input", src, "--out", tmp_path / f"out{block}", "--bands", "3,2,1",
                        "--eval", "--block", block, "--pipeline", pipeline)
        assert r.returncode == 0, r.stderr
        assert sorted(p.name for p in (tmp_path / f"out{block}").iterdir()) == ["scene.tif"]  # no overview file left
        outs.append(tmp_path / f"out{block}" / "scene.tif")
    gdal = gdal_overviews(outs[0], tmp_path / "gdal")
    for out in outs:
        with rasterio.open(out) as ds:
            assert ds.overviews(1) == [2, 4] and ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            pixels, valid = ds.read(), ds.dataset_mask() > 0
        for level in range(2):
            pixels, valid = cog.halve(pixels, valid)
            with rasterio.open(out, overview_level=level) as ds:
                assert np.array_equal(ds.read(), pixels * valid), (out, level)
                assert np.array_equal(ds.read_masks(1) > 0, valid), (out, level)
                assert np.array_equal(ds.read(), gdal[level][0]) and np.array_equal(ds.read_masks(1), gdal[level][1])

    halve = cog.halve

    def darker(pixels, valid):
        mean, any_valid = halve(pixels, valid)
        return mean // 2, any_valid

    monkeypatch.setattr(cog, "halve", darker)
    args, opts = predict.parse(["--weights", str(weights), "--input", str(src), "--out", str(tmp_path / "own"),
                                "--bands", "3,2,1", "--eval", "--device", "cpu"])
    G, config, _ = backends.load(args.weights, "cpu", "torch", args.eval, args.amp)
    opts.direction = config["direction"]
    (tmp_path / "own").mkdir()
    out = raster.predict_file(G, src, tmp_path / "own", opts, progress=False)
    with rasterio.open(out) as ds, rasterio.open(outs[1]) as whole:
        assert np.array_equal(ds.read(), whole.read())
        pixels, valid = ds.read(), ds.dataset_mask() > 0
    for level in range(2):
        pixels, valid = darker(pixels, valid)
        with rasterio.open(out, overview_level=level) as ds:
            assert np.array_equal(ds.read(), pixels), level


def test_sink_writes_each_block_once(tmp_path):
    """The engine hands the sink rows in tile strides, which cut across the file's 512 px blocks; the
    sink must still write each block once (whole), or GDAL compresses and appends it twice."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 1100, 700), dtype=np.uint8)  # noise: no block compresses away
    valid = np.ones((1100, 700), bool)
    valid[:300, :200] = False
    sizes = {}
    for name, step in (("whole", 1100), ("strides", 192)):
        path = tmp_path / f"{name}.tif"
        with cog.create_tiff(path, 700, 1100, CRS, TRANSFORM, alpha=False) as dst:
            sink = cog.GeoTiffSink(dst)
            for y in range(0, 1100, step):
                rgb = torch.from_numpy(pixels[:, y:y + step]).float() / 127.5 - 1
                sink.write(y, 0, rgb, torch.from_numpy(valid[y:y + step]))
            sink.finish()
        sizes[name] = path.stat().st_size
        with rasterio.open(path) as ds:
            assert np.array_equal(ds.read(), pixels * valid)
            assert np.array_equal(ds.read_masks(1) > 0, valid)
    assert sizes["strides"] < 1.05 * sizes["whole"], sizes


def test_windowed_equals_whole_image(tmp_path, weights):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (3, 500, 600), dtype=np.uint8)
    src = write_tif(tmp_path / "in" / "rgb.tif", data)
    G, _ = load_generator(weights)
    x = torch.from_numpy(data).float()[None] / 127.5 - 1
    for mode in ([], ["--eval"]):
        r = run_predict("--weights", weights, "--input", src, "--out", tmp_path / "out", "--block", "256", "--seed", "3",
                        "--amp", "off", *mode)
        assert r.returncode == 0, r.stderr
        with rasterio.open(tmp_path / "out" / "rgb.tif") as out:
            windowed = out.read().astype(int)
        whole = cog.to_uint8(tiles.translate(G, x, paper=not mode, seed=3)[0]).astype(int)
        diff = np.abs(windowed - whole)
        if mode:  # batches differ between block layouts: float rounding only
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
        else:  # paper mode: one tile per batch, seeded by its place: identical
            assert diff.max() == 0


def peak_memory(argv: list[str]) -> dict:
    """bench_raster's record of predict.py's argv run in a fresh process (bench_raster.measure), less
    the bench's second pass of the network alone over every tile: a speed figure, at the cost of the
    scene's whole network time again."""
    child = ("import sys, bench_raster; bench_raster.network_alone = lambda *a: 0.0; "
             "bench_raster.child(sys.argv[1:])")
    r = subprocess.run([sys.executable, "-c", child, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_the_raster(tmp_path, weights):
    # 1536 and 3072 px, not smaller: below ~1500 px (a few tile rows per column block) the allocator
    # has not yet reached its steady state, and that warm-up would be taken for growth
    small = bench_raster.make_raster(tmp_path / "small.tif", 1536)
    big = bench_raster.make_raster(tmp_path / "big.tif", 3072)  # 4x the pixels
    common = ["--weights", str(weights), "--out", str(tmp_path / "out"), "--bands", "3,2,1", "--eval",
              "--block", "512", "--device", "cpu"]
    m_small = peak_memory(common + ["--input", str(small)])
    m_big = peak_memory(common + ["--input", str(big)])
    # holding a float copy of the output would add 81 MiB from one scene to the other; the noise is ~15
    float_copy_mb = 3 * 1536 * 1536 * 4 / 2 ** 20  # one float copy of the small scene: 27 MiB
    growth_small = m_small["peak_rss_mb"] - m_small["rss_imports_mb"]
    growth_big = m_big["peak_rss_mb"] - m_big["rss_imports_mb"]
    assert m_small["rc"] == 0 and m_big["rc"] == 0
    assert growth_big - growth_small < float_copy_mb, (m_small, m_big)


def test_stretch_from_a_sample_matches_full_percentiles(tmp_path):
    data, _ = scene(h=2000, w=2000, bands=3)
    path = write_tif(tmp_path / "s.tif", data, nodata=0, tiled=True, blockxsize=256, blockysize=256)
    full = data.reshape(3, -1)[:, data.reshape(3, -1)[0] > 0].astype(np.float64)
    want_lo, want_hi = np.percentile(full, 2, axis=1), np.percentile(full, 98, axis=1)
    with rasterio.open(path) as ds:
        lo, hi, read = bands.stretch_limits(ds, [1, 2, 3], 2, 98, path)
    assert read < 0.15 * full.shape[1]  # a sample, not the raster
    span = want_hi - want_lo
    assert np.all(np.abs(lo - want_lo) < 0.02 * span) and np.all(np.abs(hi - want_hi) < 0.02 * span)
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([2, 4, 8])
    with rasterio.open(path) as ds:
        lo, hi, read = bands.stretch_limits(ds, [1, 2, 3], 2, 98, path)
    assert read <= 1000 * 1000  # the 2x overview, itself at most 1 megapixel
    assert np.all(np.abs(lo - want_lo) < 0.02 * span) and np.all(np.abs(hi - want_hi) < 0.02 * span)


def test_bad_rasters_get_one_line_and_the_rest_run(tmp_path, weights):
    data, _ = scene(h=200, w=300)
    folder = tmp_path / "in"
    write_tif(folder / "good.tif", data, nodata=0)
    write_tif(folder / "two.tif", data[:2], nodata=0)
    write_tif(folder / "empty.tif", np.zeros_like(data), nodata=0)
    (folder / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    r = run_predict("--weights", weights, "--input", folder, "--out", tmp_path / "out", "--bands", "3,2,1", "--eval")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.endswith(": skipped")]
    assert len(errors) == 3, r.stderr
    assert any(f"{folder / 'two.tif'}: --bands 3,2,1: band 3 is out of range (this raster has bands 1..2)" in e
               for e in errors)
    assert any(f"{folder / 'broken.tif'}: not a raster GDAL can read" in e for e in errors)
    assert any(f"{folder / 'empty.tif'}: every pixel" in e and "nodata" in e for e in errors)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.tif"]
    alpha_only = write_tif(tmp_path / "alpha" / "a.tif", data[:1], photometric="MINISBLACK", extrasamples=[2])
    r = run_predict("--weights", weights, "--input", alpha_only, "--out", tmp_path / "out2", "--bands", ",")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{alpha_only}: --bands leaves no band to translate" in r.stderr


def test_tta_and_gsd_run_and_stay_on_the_grid(tmp_path, weights):
    data, nodata = scene(h=300, w=400, bands=3)
    src = write_tif(tmp_path / "in" / "s.tif", data, nodata=0)
    r = run_predict("--weights", weights, "--input", src, "--out", tmp_path / "out", "--gsd", "1.0", "--tta", "--eval")
    assert r.returncode == 0, r.stderr
    with rasterio.open(tmp_path / "out" / "s.tif") as out:
        assert (out.width, out.height, out.transform) == (400, 300, TRANSFORM)
        assert (out.dataset_mask()[nodata] == 0).all()
    G, _ = load_generator(weights)
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    flipped = tiles.translate(G, x.flip(-1), paper=False, tta=True)
    assert torch.allclose(tiles.translate(G, x, paper=False, tta=True), flipped.flip(-1), atol=1e-5)


def test_dihedral_inverts_and_evaluate_takes_tta(tmp_path, weights, data):
    import evaluate
    from generator import dihedral
    x = torch.rand(2, 3, 8, 8)
    assert len({dihedral(x, k).flatten().tolist().__str__() for k in range(8)}) == 8
    assert all(torch.equal(dihedral(dihedral(x, k), k, inverse=True), x) for k in range(8))
    evaluate.main(["--weights", str(weights), "--data-root", str(data), "--out", str(tmp_path / "ev"), "--tta",
                   "--device", "cpu"])
    assert (tmp_path / "ev" / "metrics.json").is_file()
