"""vector.py: maps into a class raster, polygons and centerlines that are faithful to the map, valid,
in its CRS, the same whatever the block size, and bad input that gets one line and leaves no file."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

rasterio = pytest.importorskip("rasterio")
shapely = pytest.importorskip("shapely")
pyogrio = pytest.importorskip("pyogrio")
import pyogrio.raw  # noqa: E402
from rasterio.features import rasterize  # noqa: E402
from skimage.morphology import skeletonize  # noqa: E402

import evaluate  # noqa: E402
import palette  # noqa: E402
import vector  # noqa: E402
from cli import run_command  # noqa: E402
from conftest import ROOT, SHARED_SAMPLE, map_picture  # noqa: E402
from test_raster import CRS, write_tif  # noqa: E402


def read_layer(path, layer):
    """(shapely geometries, {field: values}, layer info) of one layer of a vector file."""
    meta, _, wkb, values = pyogrio.raw.read(path, layer=layer)
    return shapely.from_wkb(wkb), dict(zip(meta["fields"], values)), pyogrio.read_info(path, layer=layer)


def sample_maps():
    if not SHARED_SAMPLE.is_dir():
        pytest.skip(f"real maps sample not found at {SHARED_SAMPLE}")
    return [(f, np.asarray(Image.open(f).convert("RGB")).transpose(2, 0, 1).copy())
            for f in sorted(SHARED_SAMPLE.glob("*.png"))]


# ----------------------------------------------------------------------------------------------------
# One palette


def test_classify_rgb_is_evaluates_classify_and_tells_maps_from_photos():
    """vector.py's table lookup gives evaluate.classify's class on every pixel: random colours, and the
    real pairs (map halves in palette colours, satellite halves mostly not); maps are >= 90% palette
    colours, photos <= 10%."""
    rgb = np.random.default_rng(0).integers(0, 256, (3, 128, 512), dtype=np.uint8)
    near = np.array([c for name in palette.CLASSES for c in palette.PALETTE[name]], np.uint8)
    rgb[:, :64, :len(near) * 8] = np.repeat(near.T, 8, axis=1)[:, None] + np.arange(-3, 5, dtype=np.int8).repeat(
        len(near))[None, None].astype(np.uint8)  # at and beside the prototypes
    pictures = [rgb] + [pair for _, pair in sample_maps()[:10]] if SHARED_SAMPLE.is_dir() else [rgb]
    for pic in pictures:
        x = torch.from_numpy(pic)[None].float() / 127.5 - 1
        np.testing.assert_array_equal(palette.classify_rgb(pic), evaluate.classify(x)[0].numpy())
    for _, pair in (sample_maps()[:10] if SHARED_SAMPLE.is_dir() else []):
        assert palette.palette_share(pair[:, :, 256:]) >= 0.9 and palette.palette_share(pair[:, :, :256]) <= 0.1


def test_the_command_runs_without_torch(tmp_path):
    """vector.py and everything it imports leave PyTorch unloaded (about 480 MB of a 16000 px scene's
    peak), and the command still runs: a small GeoTIFF map into layers."""
    scene = write_tif(tmp_path / "scene.tif", map_picture(300, 300))
    code = ("import sys, vector; assert 'torch' not in sys.modules, 'torch imported'; "
            "vector.main(sys.argv[1:]); assert 'torch' not in sys.modules, 'torch imported while running'")
    r = subprocess.run([sys.executable, "-c", code, str(scene), "--out", str(tmp_path / "l.gpkg")], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "l.gpkg").is_file() and (tmp_path / "l.classes.tif").is_file()


# ----------------------------------------------------------------------------------------------------
# The target halves of the real pairs, through the command's files


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    """Each real pair's map half vectorised by vector.py as a user would: (class raster as written,
    {layer: geometries}) per pair, at the default settings."""
    out = tmp_path_factory.mktemp("targets")
    result = []
    for f, pair in sample_maps():
        Image.fromarray(pair[:, :, 256:].transpose(1, 2, 0)).save(out / f.name)
        vector.vectorise(out / f.name, out / f"{f.stem}.gpkg", out / f"{f.stem}.classes.tif")
        with rasterio.open(out / f"{f.stem}.classes.tif") as ds:
            classes = ds.read(1)
        gpkg = out / f"{f.stem}.gpkg"
        layers = {name: read_layer(gpkg, name)[0] for name, _ in pyogrio.list_layers(gpkg)}
        result.append((f.name, classes, layers))
    return result


def test_polygons_rasterise_back_to_the_class_raster(targets):
    """IoU >= 0.98 per class present in each map, between the class raster and its polygons rasterised
    again (pixel centres), and every polygon valid."""
    for name, classes, layers in targets:
        assert set(layers) == {"water", "park", "highway", "road", "centerlines"}
        for c in vector.AREAS:
            mask = classes == c
            geoms = layers[palette.CLASSES[c]]
            assert shapely.is_valid(geoms).all(), name
            if not mask.any():
                assert not len(geoms), name
                continue
            burnt = rasterize([(g, 1) for g in geoms], out_shape=classes.shape, dtype="uint8").astype(bool)
            iou = (burnt & mask).sum() / (burnt | mask).sum()
            assert iou >= 0.98, (name, palette.CLASSES[c], iou)


def test_centerlines_lie_on_roads_and_follow_the_skeleton(targets):
    """>= 98% of the centerline length lies on road or highway pixels (points every 0.25 px), and the
    centerlines come within 2 px of >= 90% of the road classes' skeleton pixels."""
    for name, classes, layers in targets:
        roads = (classes == vector.ROAD) | (classes == vector.HIGHWAY)
        lines = layers["centerlines"]
        if not roads.any():
            continue
        points = shapely.get_coordinates(shapely.segmentize(lines, 0.25))
        assert len(points), name
        on_road = roads[points[:, 1].astype(int).clip(0, 255), points[:, 0].astype(int).clip(0, 255)].mean()
        assert on_road >= 0.98, (name, on_road)
        ys, xs = np.nonzero(skeletonize(roads))
        near = shapely.contains_xy(shapely.union_all(lines).buffer(2), xs + 0.5, ys + 0.5).mean()
        assert near >= 0.9, (name, near)


# ----------------------------------------------------------------------------------------------------
# GeoTIFFs, blocks and seams


def test_geotiff_keeps_its_grid_and_blocks_join_a_lake_and_a_road(tmp_path):
    """On a GeoTIFF the class raster has the scene's grid, its classes and colour table, and the layers
    its CRS and extent, all valid; 512 px blocks (and 256 px cells) cut the lake and the road, and the
    merge gives one lake polygon and one centerline through their edges, measured in metres."""
    scene = write_tif(tmp_path / "scene.tif", map_picture())
    counts = vector.vectorise(scene, tmp_path / "scene.gpkg", tmp_path / "scene.classes.tif",
                              settings=vector.Settings(block=512))
    assert counts == {"water": 1, "park": 0, "highway": 0, "road": 1, "centerlines": 1}
    with rasterio.open(scene) as src, rasterio.open(tmp_path / "scene.classes.tif") as cls:
        assert (cls.crs, cls.transform, cls.shape) == (src.crs, src.transform, src.shape)
        assert cls.dtypes == ("uint8",) and cls.nodata == vector.NODATA and cls.overviews(1)
        assert cls.colormap(1)[palette.WATER][:3] == palette.PALETTE["water"][0] and "3 water" in cls.descriptions[0]
        x = torch.from_numpy(src.read())[None].float() / 127.5 - 1
        np.testing.assert_array_equal(cls.read(1), evaluate.classify(x)[0].numpy())
        left, bottom, right, top = src.bounds
    for layer in ("water", "road", "centerlines"):
        geoms, fields, info = read_layer(tmp_path / "scene.gpkg", layer)
        assert rasterio.crs.CRS.from_user_input(info["crs"]) == rasterio.crs.CRS.from_string(CRS)
        assert shapely.is_valid(geoms).all() and len(geoms) == 1
        x0, y0, x1, y1 = info["total_bounds"]
        assert left <= x0 < x1 <= right and bottom <= y0 < y1 <= top
    (lake,), fields, _ = read_layer(tmp_path / "scene.gpkg", "water")
    assert lake.geom_type == "Polygon" and not lake.interiors
    x0, y0, x1, y1 = lake.bounds  # across the block edges at x 512, y 512 (256 m from the corner)
    assert x0 < 500000 + 256 < x1 and y0 < 4000000 - 256 < y1
    assert fields["area_m2"][0] == pytest.approx(np.pi * 90 ** 2 * 0.25, rel=0.02)
    assert fields["area_px"][0] == pytest.approx(fields["area_m2"][0] / 0.25)
    (line,), fields, _ = read_layer(tmp_path / "scene.gpkg", "centerlines")
    assert fields["class"][0] == "road" and line.bounds[0] < 500000 + 5 and line.bounds[2] > 500000 + 1100 * 0.5 - 5
    assert fields["length_m"][0] == pytest.approx(1100 * np.hypot(1, 0.3) * 0.5, rel=0.02)


def test_geojson_is_rfc7946_in_longitude_and_latitude(tmp_path):
    """--out *.geojson: one FeatureCollection of every layer, each feature naming its layer, reprojected
    to EPSG:4326 (the scene lies at 15 degrees east, 36 north), with the same areas as the GeoPackage."""
    scene = write_tif(tmp_path / "scene.tif", map_picture())
    vector.main([str(scene), "--out", str(tmp_path / "scene.geojson"), "--no-classes"])
    vector.main([str(scene), "--out", str(tmp_path / "scene.gpkg"), "--no-classes", "--preview", str(tmp_path / "p.png")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png", "scene.geojson", "scene.gpkg", "scene.tif"]
    geoms, fields, info = read_layer(tmp_path / "scene.geojson", None)
    assert info["crs"] == "EPSG:4326" and sorted(fields["layer"]) == ["centerlines", "road", "water"]
    x0, y0, x1, y1 = info["total_bounds"]
    assert 14.9 < x0 < x1 < 15.1 and 36.1 < y0 < y1 < 36.2
    water = list(fields["layer"]).index("water")
    assert fields["area_m2"][water] == pytest.approx(read_layer(tmp_path / "scene.gpkg", "water")[1]["area_m2"][0])
    assert Image.open(tmp_path / "p.png").width == 768


def test_block_size_changes_nothing(tmp_path):
    """A mosaic of 15 real maps cut at 600 x 1100 px, vectorised in 512 px and in 1024 px blocks: the
    same polygons and centerlines, vertex for vertex."""
    maps = [pair[:, :, 256:] for _, pair in sample_maps()[:15]]
    classes = palette.classify_rgb(np.concatenate([np.concatenate(maps[i:i + 5], 2) for i in (0, 5, 10)], 1))
    found = []
    for block in (512, 1024):
        layers = vector.layers(classes[:600, :1100], vector.Settings(block=block))
        found.append([sorted((c, shapely.normalize(g).wkb) for c, g in items)
                      for items in (layers.polygons, layers.lines)])
    assert len(found[0][0]) > 100 and len(found[0][1]) > 300
    assert found[0] == found[1]


# ----------------------------------------------------------------------------------------------------
# predict.py --vector


def test_predict_vector_writes_the_layers_beside_the_map(tmp_path, monkeypatch, capsys):
    """predict.py --vector writes SCENE.gpkg beside SCENE.tif: vector.py's layers of that map (here a
    stand-in engine draws a known map on the scene's grid). A random generator's map is no map:
    SCENE.tif is written with a note saying why it has no layers (as in the app), and no SCENE.gpkg."""
    import predict
    import raster
    from generator import Generator, init_weights
    torch.save({"G": init_weights(Generator(ngf=8)).state_dict(), "config": {"ngf": 8}}, tmp_path / "G.pt")
    scene = write_tif(tmp_path / "scene.tif", np.full((3, 300, 300), 90, np.uint8))
    argv = ["--weights", str(tmp_path / "G.pt"), "--input", str(scene), "--eval", "--device", "cpu", "--vector"]
    assert predict.main([*argv, "--out", str(tmp_path / "random")]) == 0
    assert "scene.tif: no GIS layers: not a map" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "random").iterdir()) == ["scene.tif"]

    def draw_map(G, path, out_dir, opts, **kw):
        return write_tif(out_dir / f"{path.stem}.tif", map_picture(300, 300))

    monkeypatch.setattr(raster, "predict_file", draw_map)
    assert predict.main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scene.gpkg", "scene.tif"]
    vector.vectorise(tmp_path / "out" / "scene.tif", tmp_path / "direct.gpkg")
    for layer in ("road", "centerlines"):
        got, want = read_layer(tmp_path / "out" / "scene.gpkg", layer), read_layer(tmp_path / "direct.gpkg", layer)
        assert len(got[0]) == 1 and shapely.equals_exact(got[0], want[0], 0).all() and got[2]["crs"] == want[2]["crs"]


# ----------------------------------------------------------------------------------------------------
# evaluate.py's GIS figures


def test_gis_figures_measure_roads_found_within_two_pixels():
    """A real map against itself: completeness and correctness 1, its lengths and areas twice; shifted
    by 1 px the roads are still found, by 8 px mostly not; against a map without roads: none found."""
    _, pair = sample_maps()[1]  # a highway, roads and water
    real_B = torch.from_numpy(pair[:, :, 256:])[None].float() / 127.5 - 1
    figures = evaluate.GISFigures()
    same = figures.update(real_B, real_B)
    assert same["road_complete"] == pytest.approx(1) and same["road_correct"] == pytest.approx(1)
    assert same["road_len"] == same["road_len_target"] > 500 and same["water_area"] == same["water_area_target"] > 0
    layers = vector.layers(palette.classify_rgb(pair[:, :, 256:]))
    assert same["road_len"] == pytest.approx(sum(g.length for _, g in layers.lines))
    near, far = (figures.update(torch.roll(real_B, shift, 3), real_B) for shift in (1, 8))
    assert near["road_complete"] > 0.9 and near["road_correct"] > 0.9
    assert far["road_complete"] < 0.6 and far["road_correct"] < 0.6
    blank = figures.update(torch.full_like(real_B, 236 / 127.5 - 1), real_B)
    assert blank["road_len"] == 0 and blank["road_complete"] == 0 and blank["road_correct"] is None
    split = figures.result()
    assert split["road_len_target"] == pytest.approx(same["road_len"])
    assert split["road_complete"] == pytest.approx(sum(r["road_complete"] * r["road_len_target"] for r in figures.rows)
                                                   / sum(r["road_len_target"] for r in figures.rows))


def test_evaluate_writes_gis_figures_per_image_and_split(tmp_path):
    """evaluate.py puts them in per_image.csv and metrics.json (target lengths as vector.py measures
    them); --no-gis leaves them out."""
    import csv
    import json
    from generator import Generator, init_weights
    torch.save({"G": init_weights(Generator(ngf=8)).state_dict(), "config": {"ngf": 8}}, tmp_path / "G.pt")
    target = map_picture(256, 256)
    pair = np.concatenate([np.full_like(target, 90), target], 2)
    (tmp_path / "pairs").mkdir()
    Image.fromarray(pair.transpose(1, 2, 0)).save(tmp_path / "pairs" / "one.png")
    for flags, out in (([], "ev"), (["--no-gis"], "plain")):
        evaluate.main(["--weights", str(tmp_path / "G.pt"), "--input", str(tmp_path / "pairs"), "--out",
                       str(tmp_path / out), "--eval", "--device", "cpu", *flags])
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    (row,) = csv.DictReader(open(tmp_path / "ev" / "per_image.csv"))
    expected = sum(g.length for _, g in vector.layers(palette.classify_rgb(target)).lines)
    assert metrics["road_len_target"] == pytest.approx(expected)
    assert float(row["road_len_target"]) == pytest.approx(expected)
    assert set(evaluate.GISFigures.KEYS) <= metrics.keys() and set(evaluate.GISFigures.KEYS) <= row.keys()
    assert not set(evaluate.GISFigures.KEYS) & json.loads((tmp_path / "plain" / "metrics.json").read_text()).keys()


# ----------------------------------------------------------------------------------------------------
# The flags


def test_straight_runs_go_as_shapely_simplify_at_zero_drops_them():
    """polygons.without_straight_runs against shapely.simplify(geom, 0): rings whose first vertex is on
    a run, runs along and across the axes, a hole, and two polygons (a MultiPolygon); the pieces' list
    is emptied."""
    import polygons
    shell = [(2, 0), (4, 0), (6, 0), (6, 3), (6, 6), (3, 6), (0, 6), (0, 3), (1, 1), (0, 0)]  # starts mid-run
    hole = [(2, 2), (3, 3), (4, 4), (4, 2), (3, 2)]
    for geom in (shapely.Polygon(shell, [hole]), shapely.MultiPolygon([shapely.Polygon(shell, [hole]),
                                                                     shapely.Polygon([(20, 0), (22, 0), (24, 0), (24, 2), (20, 2)])])):
        group = [geom]
        got = polygons.without_straight_runs(group, chunk=3)  # chunks smaller than a ring
        want = shapely.simplify(geom, 0, preserve_topology=False)
        assert group == [] and shapely.normalize(got).equals_exact(shapely.normalize(want), 0), (got, want)
        assert shapely.get_num_coordinates(got) < shapely.get_num_coordinates(geom)
        assert got.equals(geom)  # the same point set


def test_min_area_sieves_into_the_surrounding_class():
    """--min-area 9: a 2x2 park speck in a lake becomes lake, a 3x3 one stays (its polygon covers its
    9 pixel centres); 0 keeps both."""
    classes = np.full((64, 64), palette.WATER, np.uint8)
    classes[10:12, 10:12] = classes[30:33, 30:33] = palette.PARK
    kept = vector.sieve(classes, 0)
    assert (kept == classes).all()
    sieved = vector.sieve(classes, 9)
    assert (sieved[10:12, 10:12] == palette.WATER).all() and (sieved[30:33, 30:33] == palette.PARK).all()
    parks = [g for c, g in vector.layers(classes, vector.Settings(min_area=9)).polygons if c == palette.PARK]
    assert len(parks) == 1
    assert (rasterize([(parks[0], 1)], out_shape=classes.shape, dtype="uint8") == (sieved == palette.PARK)).all()


def test_spur_prunes_short_branches():
    """A road with a branch 6 px long: --spur 10 prunes it (one line end to end), --spur 0 keeps it (three
    lines meeting at the junction)."""
    classes = np.zeros((64, 256), np.uint8)
    classes[30:35, 10:246] = vector.ROAD
    classes[24:30, 120:123] = vector.ROAD
    pruned = vector.layers(classes, vector.Settings(spur=10)).lines
    kept = vector.layers(classes, vector.Settings(spur=0)).lines
    assert len(pruned) == 1 and pruned[0][1].length > 220
    assert len(kept) == 3 and min(g.length for _, g in kept) < 10


def test_simplification_keeps_neighbouring_classes_edge_to_edge():
    """Water and park meeting along a slanted edge, simplified with --simplify 2: fewer vertices than
    with 0, yet no gap and no overlap between them (one shared edge, not two simplified apart)."""
    yy, xx = np.mgrid[:200, :200]
    classes = np.where(yy < 40 + 0.37 * xx + 6 * np.sin(xx / 9), palette.WATER, palette.PARK).astype(np.uint8)
    vertices = {}
    for tolerance in (0, 2):
        polygons = vector.layers(classes, vector.Settings(simplify=tolerance)).polygons
        water, park = ([g for c, g in polygons if c == k] for k in (palette.WATER, palette.PARK))
        assert len(water) == len(park) == 1
        assert water[0].intersection(park[0]).area == pytest.approx(0, abs=1e-9)
        assert water[0].union(park[0]).area == pytest.approx(200 * 200)
        vertices[tolerance] = shapely.get_num_coordinates(water[0])
    assert vertices[2] < vertices[0] / 2


# ----------------------------------------------------------------------------------------------------
# Bad input: one line, and no file


def run_vector(capsys, *argv) -> str:
    """The command's one line for bad input: sys.exit's message, or argparse's on stderr."""
    with pytest.raises(SystemExit) as e:
        run_command(vector.main, list(map(str, argv)))
    err = capsys.readouterr().err
    line = e.value.code if isinstance(e.value.code, str) else err.strip().splitlines()[-1]
    assert e.value.code not in (0, None) and "\n" not in line and "Traceback" not in err
    return line


@pytest.mark.parametrize("case", ["photo", "empty", "nodata", "geojson_without_crs", "out_is_folder"])
def test_bad_input_gets_one_line_and_leaves_no_file(tmp_path, capsys, case):
    out = tmp_path / "out"
    out.mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (3, 300, 300), dtype=np.uint8)  # a photo's colours
    target = out / "layers.gpkg"
    if case == "photo":
        src, expected = write_tif(tmp_path / "photo.tif", rgb), "not a map: 2% of its pixels"
    elif case == "empty":  # every pixel background: an empty class raster
        src, expected = write_tif(tmp_path / "plain.tif", np.full_like(rgb, 236)), "no roads, highways, water or parks"
    elif case == "nodata":
        src, expected = write_tif(tmp_path / "void.tif", np.zeros_like(rgb), nodata=0), "every pixel is nodata"
    elif case == "geojson_without_crs":
        Image.fromarray(map_picture(300, 300).transpose(1, 2, 0)).save(tmp_path / "map.png")
        src, target, expected = tmp_path / "map.png", out / "layers.geojson", "has no CRS, and GeoJSON (RFC 7946)"
    else:
        src, target = write_tif(tmp_path / "map.tif", map_picture(300, 300)), out
        expected = "is a folder, expected a file"
    message = run_vector(capsys, src, "--out", target)
    assert expected in message and str(src if case != "out_is_folder" else target) in message, message
    assert os.listdir(out) == []  # no layers, no class raster, no temp file


def test_read_only_folder_and_a_failing_write_leave_no_file(tmp_path, capsys, monkeypatch):
    """--out in a folder that cannot be written is one line before any work; a write that fails
    half-way (a full disk) removes every temp file: no partial .gpkg, no class raster."""
    src = write_tif(tmp_path / "map.tif", map_picture(600, 600))
    out = tmp_path / "out"
    out.mkdir()
    if os.geteuid() != 0:  # root writes in read-only folders
        out.chmod(0o555)
        try:
            assert "cannot write in" in run_vector(capsys, src, "--out", out / "layers.gpkg")
        finally:
            out.chmod(0o755)
    calls, write = [], pyogrio.raw.write

    def full_disk(*a, **kw):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(28, "No space left on device", str(a[0]))
        return write(*a, **kw)

    monkeypatch.setattr(pyogrio.raw, "write", full_disk)
    message = run_vector(capsys, src, "--out", out / "layers.gpkg", "--block", "512")
    assert "No space left on device" in message and len(calls) > 3
    assert os.listdir(out) == []


def test_flags_out_of_range_are_usage_errors(tmp_path, capsys):
    src = write_tif(tmp_path / "map.tif", map_picture(64, 64))
    for flags, expected in ((["--block", "100"], "--block 100: expected a positive multiple of 512"),
                            (["--simplify", "-1"], "--simplify -1.0: expected a tolerance >= 0"),
                            (["--min-area", "5000"], "--min-area 5000: expected 0 to 1024"),
                            (["--spurr", "3"], "did you mean --spur?")):
        assert expected in run_vector(capsys, src, "--out", tmp_path / "x.gpkg", *flags)
    assert not list(tmp_path.glob("x*"))
    shutil.rmtree(tmp_path)
