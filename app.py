"""A web page and HTTP API over predict.py's engine: drop in a satellite image or GeoTIFF, get the map.

    python app.py                                   # http://127.0.0.1:7860, newest weights/*/G.pt or sat2map
    python app.py --weights weights/maps/G.pt --port 8080 --device cuda

The page is a Gradio app (so it also runs unchanged as a Hugging Face Space); its Translate button is
the endpoint /translate of the same server, callable from a program with gradio_client. Every request
goes through predict's own options and raster.predict_file, so its map equals predict.py's on the
same file with the same settings. Each request is bounded (bounds.py): its work in megapixels is
checked before any, and it stops at the next tile when its client leaves, presses Stop or runs out of
time. Models are named by labels, never by server paths. See docs/app.md.
"""
import atexit
import contextlib
import contextvars
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

# Gradio keeps uploads and results in $GRADIO_TEMP_DIR (default /tmp/gradio, shared and never emptied of
# what a stopped server left): unless it is set, this process gets its own, removed whole at exit
if not os.environ.get("GRADIO_TEMP_DIR"):
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="sat2map-gradio-")
    atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from gradio.processing_utils import save_file_to_cache  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402
from PIL import Image  # noqa: E402

import backends  # noqa: E402
import bands  # noqa: E402
import bounds  # noqa: E402
import cog  # noqa: E402
import dataset  # noqa: E402
import int8  # noqa: E402
import predict  # noqa: E402
import raster  # noqa: E402
import tiles  # noqa: E402
import vector  # noqa: E402
from cli import Cancelled, InputError, command_parser, run_command  # noqa: E402
from config import WEIGHTS_HELP, add_device  # noqa: E402
from generator import PRETRAINED  # noqa: E402
from utils import pick_device, save_image  # noqa: E402

MAX_MEGAPIXELS = 64  # a request's work at most by default: a real scene (8000 x 8000 px), not a gigapixel one
MAX_SECONDS = 600  # a request's time at most by default, from the moment it leaves the queue
MAX_MODELS = 4  # generators kept loaded at most by default (one per model and test-time mode)
PREVIEW_PX = 2048  # longest side of the images shown on the page; the downloads keep full size
EXAMPLES = 4  # example tiles taken from the validation split
UPLOAD_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff"]
CACHE_AGE_S = 3600  # uploads and results leave Gradio's cache this long after their request
THEME = gr.themes.Soft(primary_hue="teal")
CSS = """
#title {text-align: center}
#status {min-height: 1.5em}
#map_png .empty, #map_tif .empty, #map_gpkg .empty {min-height: 4rem !important; height: 4rem}
#map_png .empty .icon, #map_tif .empty .icon, #map_gpkg .empty .icon {display: none}
"""


# ----------------------------------------------------------------------------------------------------
# Models: only the server's own, by label, loaded on first use


def weight_choices(weights_dir: Path, given: str) -> tuple[dict[str, str], str]:
    """(label -> weights, the label of `given`) for the dropdown: every run under weights_dir (its G.pt
    and G_best.pt, newest run first), the pretrained names, and `given` (the operator's --weights)
    where it is none of these, labelled by its run folder and file (r1/G.pt). A client picks a label;
    it never names a path, nor sees one."""
    choices = {}
    runs = sorted(weights_dir.glob("*/G*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in runs:
        if path.name in ("G.pt", "G_best.pt"):
            choices.setdefault(path.parent.name + (" (best)" if path.name == "G_best.pt" else ""), str(path))
    choices.update({name: name for name in PRETRAINED})
    same = [label for label, w in choices.items() if w == given or Path(w).resolve() == Path(given).resolve()]
    if same:
        return choices, same[0]
    path = Path(given).resolve()
    label = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
    return {label: given, **choices}, label


def default_weights(weights_dir: Path) -> str:
    """The newest weights_dir/*/G.pt, else the pretrained sat2map (downloaded on first use)."""
    runs = sorted(weights_dir.glob("*/G.pt"), key=lambda p: p.stat().st_mtime)
    return str(runs[-1]) if runs else "sat2map"


class Models:
    """Generators by (label, test-time mode), each loaded as predict.py loads it (backends.load: the
    server's --backend and --int8 apply to the eval mode) on first use: once per process, also when
    requests for it arrive together (one loading lock per key). At most `keep` stay loaded, the least
    recently used leaving first (a translation still running keeps its own until it ends). Each label
    also has a translation lock: a model runs one at a time."""

    def __init__(self, choices: dict[str, str], device, keep: int = MAX_MODELS, backend="auto", use_int8=False,
                 calibrate=None):
        self.choices, self.device, self.keep = choices, pick_device(str(device)), keep
        self.backend, self.int8 = backend, use_int8
        self.calibrate = None if calibrate is None else (
            lambda config: int8.folder_tiles(calibrate, config["input_nc"]))
        self.locks = {label: threading.Lock() for label in choices}
        self.loaded = OrderedDict()  # (label, eval mode) -> (G, config), the most recently used last
        self.loading = {key: threading.Lock() for key in ((label, m) for label in choices for m in (False, True))}
        self.guard = threading.Lock()  # over self.loaded

    def get(self, label: str, eval_mode: bool):
        """(G, config) for a label of the server's own list."""
        key = (label, eval_mode)
        with self.loading[key]:
            with self.guard:
                if key in self.loaded:
                    self.loaded.move_to_end(key)
                    return self.loaded[key]
            model = self.load(label, eval_mode)
            with self.guard:
                self.loaded[key] = model
                while len(self.loaded) > self.keep:
                    self.loaded.popitem(last=False)
            return model

    def load(self, label: str, eval_mode: bool):
        """The one place a generator is loaded."""
        G, config, choice = backends.load(self.choices[label], self.device, self.backend if eval_mode else "auto",
                                          eval_mode, int8=self.int8 and eval_mode, calibrate=self.calibrate)
        print(f"{label}, {'eval' if eval_mode else 'paper'} mode: {choice}")
        return G, config

    def hide_paths(self, text: str) -> str:
        """text with each model's path on the server (as given, and absolute) replaced by its label."""
        named = {}
        for label, weights in self.choices.items():
            if label != weights:
                named.update({weights: label, str(Path(weights).resolve()): label})
        paths = sorted(named, key=len, reverse=True)  # in one pass, an absolute path before a relative one in it
        return re.sub("|".join(map(re.escape, paths)), lambda m: named[m.group(0)], text) if paths else text


# ----------------------------------------------------------------------------------------------------
# Pictures for the page


def example_tiles(folder: Path | None, count: int = EXAMPLES) -> list[str]:
    """The satellite halves of the first `count` A|B pairs in `folder` (data/maps/val), written once
    into Gradio's cache folder so that the page can serve them."""
    if folder is None or not folder.is_dir():
        return []
    pairs = sorted(p for p in folder.iterdir() if p.suffix.lower() in dataset.IMG_EXTS)[:count]
    out = Path(get_upload_folder()).resolve() / "sat2map-examples"
    tiles = []
    for pair in pairs:
        tile = out / f"{folder.parent.name}_{pair.stem}.png"
        if not tile.exists():
            img = dataset.load_rgb(pair)
            save_image(img.crop((0, 0, img.width // 2, img.height)), tile)
        tiles.append(str(tile))
    return tiles


def thumbnail(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """img at `size`, shrunk with a box filter when it is larger (previews only)."""
    return img if img.size == size else img.resize(size, Image.BOX)


def preview_size(width: int, height: int) -> tuple[int, int]:
    f = min(1.0, PREVIEW_PX / max(width, height))
    return max(1, round(width * f)), max(1, round(height * f))


def read_preview(path: Path, size: tuple[int, int], opts: raster.Options | None = None) -> Image.Image:
    """An RGB picture of a raster (the result, or the input scaled as the engine scales it), read at
    preview size from its overviews; pixels without data are black. A grey raster (a grey generator's
    input or map) is shown as grey, its one band repeated (bands.pick_bands)."""
    with bands.rasterio_env():
        ds = bands.open_raster(path)
        with ds:
            chosen = bands.pick_bands(ds, None if opts is None else opts.bands, path)
            shape = (3, size[1], size[0])
            data = ds.read(chosen, out_shape=shape).astype(np.float64)
            valid = np.all(ds.read_masks(sorted(set(chosen)), out_shape=(len(set(chosen)), *shape[1:])) > 0, axis=0)
            lo, hi = (None, None) if opts is None else bands.value_limits(ds, chosen, opts, path)
    if lo is not None:
        data = (np.nan_to_num(data) - lo[:, None, None]) / (hi - lo)[:, None, None] * 255
    rgb = np.clip(np.nan_to_num(data), 0, 255).round().astype(np.uint8) * valid
    return Image.fromarray(rgb.transpose(1, 2, 0))


# ----------------------------------------------------------------------------------------------------
# Stopping a request: its client leaving, its Stop button, its time limit


def queue_event():
    """This request's event in Gradio's queue (None outside one), looked up in the handler's thread.
    Gradio 6 tells a running synchronous handler neither that its client left nor that it was
    cancelled: its thread runs to the end, holding the queue's slot. What the queue does when the
    client's event stream (/queue/data) closes is mark the event `alive = False`
    (Queue.clean_events); no public API exposes that flag, so it is read here from the queue itself."""
    from gradio.context import LocalContext
    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    for job in getattr(getattr(blocks, "_queue", None), "active_jobs", None) or []:
        for event in job or []:
            if getattr(event, "_id", None) == event_id:
                return event
    return None


def client_left(event):
    """A check for bounds.Stop that gives its reason once the client of `event` (queue_event) has left."""
    return lambda: "the client left" if event is not None and not getattr(event, "alive", True) else None


class Running:
    """The Stops of the translations running now, by the client session that asked: a session's Stop
    button (the endpoint /stop) stops that session's translations and nobody else's."""

    def __init__(self):
        self.stops, self.guard = {}, threading.Lock()

    @contextlib.contextmanager
    def register(self, session: str | None, stop: bounds.Stop):
        if session is None:  # called from Python, not through the server: nothing can press Stop
            yield stop
            return
        with self.guard:
            self.stops.setdefault(session, set()).add(stop)
        try:
            yield stop
        finally:
            with self.guard:
                self.stops[session].discard(stop)
                if not self.stops[session]:
                    del self.stops[session]

    def stop(self, session: str | None):
        with self.guard:
            for stop in self.stops.get(session, ()):
                stop.set("the Stop button was pressed")


@contextlib.contextmanager
def slot(lock: threading.Lock, cancel):
    """Hold a model's translation lock for the block; while waiting for it, give up (Cancelled) as soon
    as `cancel` says so."""
    while not lock.acquire(timeout=0.1):
        tiles.stop_if(cancel)
    try:
        yield
    finally:
        lock.release()


# ----------------------------------------------------------------------------------------------------
# One request


def translate_file(models: Models, path: Path, label: str, args, progress, work: Path, cancel=None) -> dict:
    """Translate one upload into `work` as predict.py would; returns the files to show and download
    and the numbers for the status line. Bad input (over the size bound too, checked first) raises
    InputError; `cancel` (tiles.Engine.run's hook) stops it with Cancelled."""
    opts = predict.options(args)
    if label not in models.choices:
        raise InputError(f"weights {label!r}: not one of this server's models ({', '.join(models.choices)})")
    if not raster.is_picture(path):
        geotiff_only(path)
    bounds.check_size(path, opts)  # before the model's slot is taken: a refusal never waits for it
    # gr.Progress finds its request in context variables, which the engine's writer thread lacks
    context = contextvars.copy_context()

    def report(done, total):
        context.run(progress, (done, total), desc="translating", unit="tiles")

    with slot(models.locks[label], cancel):
        progress(0, desc="loading the model")
        G, config = models.get(label, args.eval)
        opts.direction = config["direction"]
        start = time.perf_counter()
        out = raster.predict_file(G, path, work, opts, progress=report, cancel=cancel)
        seconds = time.perf_counter() - start
    png, tif, gpkg, note = out, None, None, ""
    if out.suffix == ".tif":  # a georeferenced input: the COG as predict.py writes it, plus a PNG of it
        png, tif = work / f"{path.stem}.png", out
        cog.publish(out, png, "png")
        # and its GIS layers, as predict.py --vector writes them; a map with nothing to vectorise keeps its map
        gpkg, why = vector.layers_beside(out, lambda done, rows: vectorising(done, rows, progress, cancel))
        note = f" · no GIS layers: {why}" if why else ""
    if raster.is_picture(path):
        with Image.open(png) as result:
            width, height = result.size
            after = thumbnail(result.convert("RGB"), preview_size(width, height))
        before = thumbnail(dataset.load_rgb(path, opts.max_pixels), after.size)
    else:
        with bands.rasterio_env(), bands.open_raster(out) as ds:
            width, height = ds.width, ds.height
        size = preview_size(width, height)
        after, before = read_preview(out, size), read_preview(path, size, opts)
    return {"png": png, "tif": tif, "gpkg": gpkg, "note": note, "before": before, "after": after, "seconds": seconds,
            "megapixels": width * height / 1e6, "size": (width, height)}


def vectorising(done: int, rows: int, progress, cancel):
    """vector.vectorise's progress: on the page, and the request's cancel hook asked at each step, so
    that a client gone or a Stop ends the vectorising too."""
    tiles.stop_if(cancel)
    progress((done, rows), desc="vectorising", unit="rows")


def geotiff_only(path: Path):
    """Refuse a raster upload GDAL does not read as a GeoTIFF: GDAL picks its reader by content, not by
    name, and a VRT (or another description format) named .tif could name any file of the server, or
    a URL, as its pixels."""
    import rasterio
    from rasterio.errors import RasterioError
    try:
        with bands.rasterio_env(), rasterio.open(path, driver="GTiff"):
            pass
    except (RasterioError, OSError):
        raise InputError(f"{path}: not a GeoTIFF (the rasters this server reads)") from None


def publish_files(paths: list[Path | None]) -> list[str | None]:
    """Copies of the request's files in Gradio's cache, where the page serves them from and the
    cache clean-up removes them; the request's own folder is removed when it ends."""
    return [None if p is None else save_file_to_cache(p, get_upload_folder()) for p in paths]


def request_args(path: Path, max_megapixels: float, mode="paper", seed=0, tta=False, scale=1.0, gsd=None,
                 bands="", stretch="", value_range=""):
    """predict.py's flags for one request: its defaults, with the page's fields. The server's --backend
    and --int8 act through Models; here --backend is pinned, so that a $SAT2MAP_BACKEND of onnxruntime
    (the eval mode's) is not checked against a paper-mode request."""
    args = predict.parser().parse_args(["--weights", "-", "--input", str(path), "--out", "-", "--backend", "auto",
                                        "--max-megapixels", str(max_megapixels)])
    args.eval, args.seed, args.tta = mode == "eval", int(seed or 0), bool(tta)
    args.scale, args.gsd = float(1.0 if scale is None else scale), blank(gsd)
    args.bands, args.stretch, args.value_range = blank(bands), blank(stretch), blank(value_range)
    return args


def blank(value):
    """A text field left empty means the flag's default."""
    value = (value or "").strip() if isinstance(value, str) else value
    return None if value in ("", None) else value


# ----------------------------------------------------------------------------------------------------
# The page


def build_app(weights: str | None = None, weights_dir: Path | str = "weights", device="cpu",
              examples: Path | str | None = "data/maps/val", max_megapixels: float = MAX_MEGAPIXELS,
              queue: int = 16, concurrency: int = 1, preload: bool = False, max_seconds: float = MAX_SECONDS,
              max_models: int = MAX_MODELS, backend: str | None = None, use_int8: bool = False,
              calibrate: str | None = None) -> gr.Blocks:
    """The Gradio app (page and API). weights: the default model (a path or pretrained name; default
    the newest weights_dir/*/G.pt, else sat2map); examples: a folder of A|B pairs; max_megapixels: the
    most work a request may ask for (bounds.check_size); queue: requests waiting at most, beyond which
    a client is told to try again; concurrency: translations at once (at most one per model);
    preload: load the default model now (downloading sat2map if need be), so that a model that cannot
    load fails before the server starts; max_seconds: a request's time limit; max_models: generators
    kept loaded; backend, use_int8, calibrate: --backend (None: its default), --int8 and --calibrate
    FOLDER of the eval mode (backends.load)."""
    weights_dir = Path(weights_dir)
    choices, weights = weight_choices(weights_dir, weights or default_weights(weights_dir))
    models = Models(choices, device, max_models, backend or backends.default_backend(), use_int8, calibrate)
    running = Running()
    if preload:
        models.get(weights, eval_mode=False)  # the page's default mode is the paper's

    def translate(image, mode="paper", seed=0, tta=False, scale=1.0, gsd=None, bands="", stretch="",
                  value_range="", weights=weights, request: gr.Request = None, progress=gr.Progress()):
        """Translate an uploaded satellite image or GeoTIFF into a map (PNG first, then the
        before/after pair, the map, the Cloud-Optimized GeoTIFF of a georeferenced input, a status
        line, and the map's GIS layers as a GeoPackage for a georeferenced input)."""
        if not image:
            raise gr.Error("Upload a satellite image (PNG/JPEG) or a GeoTIFF first.")
        path = Path(image)
        args = request_args(path, max_megapixels, mode, seed, tta, scale, gsd, bands, stretch, value_range)
        stop = bounds.Stop(max_seconds, [client_left(queue_event())])
        with running.register(getattr(request, "session_hash", None), stop), \
                tempfile.TemporaryDirectory(prefix="sat2map-app-") as work:
            try:
                r = translate_file(models, path, weights, args, progress, Path(work), stop)
            except InputError as e:  # the server's paths are no business of the client's
                message = models.hide_paths(str(e)).replace(str(path.parent) + os.sep, "").replace(work + os.sep, "")
                raise gr.Error(message) from None
            except Cancelled as e:
                raise gr.Error(f"{path.name}: stopped: {e}", print_exception=False) from None
            save_image(r["before"], Path(work) / "input.png")
            after = r["png"] if r["after"].size == r["size"] else Path(work) / "map.png"
            if after != r["png"]:  # a reduced preview
                save_image(r["after"], after)
            png, before, after, tif, gpkg = publish_files([r["png"], Path(work) / "input.png", after, r["tif"],
                                                           r["gpkg"]])
        w, h = r["size"]
        status = (f"**{w}×{h} px** ({r['megapixels']:.2f} MP) in **{r['seconds']:.1f} s**: "
                  f"{r['megapixels'] / max(r['seconds'], 1e-9):.2f} MP/s · {mode} mode · {weights}{r['note']}")
        return png, (before, after), after, tif, status, gpkg

    def stop(request: gr.Request):
        """Stop the translations this client session is running."""
        running.stop(getattr(request, "session_hash", None))

    bound = (f"This server translates up to **{max_megapixels:g} megapixels** per request (the input's size, or "
             f"its size after Scale or Ground resolution if larger), for at most **{max_seconds:g} s**.")
    return page(translate, stop, choices, weights, examples, bound, queue, concurrency)


def page(translate, stop, choices: dict, weights: str, examples, bound: str, queue: int, concurrency: int):
    """The page's layout, with `translate` behind Translate (the endpoint /translate) and `stop` behind
    Stop (/stop), which also ends the page's wait for the translation."""
    with gr.Blocks(title="sat2map", analytics_enabled=False, delete_cache=(CACHE_AGE_S // 4, CACHE_AGE_S)) as demo:
        gr.Markdown("# sat2map: satellite image → map\nDrop a satellite picture (PNG/JPEG) or a GeoTIFF and "
                    "press **Translate**. A pix2pix generator (Isola et al. 2017) draws the map, tile by tile, "
                    f"at any size. {bound} **Stop** ends a translation at its next tile.", elem_id="title")
        with gr.Row():
            with gr.Column(scale=2):
                image = gr.File(label="Satellite image or GeoTIFF", file_types=UPLOAD_TYPES, height=120)
                with gr.Row():
                    mode_in = gr.Radio(["paper", "eval"], value="paper", label="Test-time mode",
                                       info="paper: dropout on, batch statistics (the paper's); eval: deterministic")
                    seed_in = gr.Number(0, precision=0, label="Seed", info="the paper mode's dropout")
                tta_in = gr.Checkbox(False, label="Test-time augmentation",
                                     info="average the 8 flips/rotations of each tile (8x slower)")
                weights_in = gr.Dropdown(list(choices), value=weights, label="Model",
                                         info="runs under weights/ and the pretrained generators")
                with gr.Accordion("Size and raster options", open=False):
                    scale_in = gr.Number(1.0, label="Scale", info="resize first; 0.43 matches the maps "
                                         "set's zoom (600 px tiles seen at 256 px)")
                    gsd_in = gr.Number(None, label="Ground resolution (m/px)",
                                       info="GeoTIFF: resample to this first (instead of Scale)")
                    bands_in = gr.Textbox("", label="Bands", placeholder="3,2,1",
                                          info="GeoTIFF: 1-based bands fed as R,G,B (default: the RGB bands)")
                    stretch_in = gr.Textbox("", label="Stretch (percentiles)", placeholder="2,98",
                                            info="GeoTIFF: LOW,HIGH percentiles mapped to 0..255 "
                                                 "(default 2,98 for non-8-bit data)")
                    range_in = gr.Textbox("", label="Value range", placeholder="0,3000",
                                          info="GeoTIFF: MIN,MAX mapped to 0..255 instead of a stretch")
                with gr.Row():
                    button = gr.Button("Translate", variant="primary")
                    stop_button = gr.Button("Stop", variant="stop")
                example_files = example_tiles(None if examples is None else Path(examples))
                if example_files:
                    gr.Examples([[t] for t in example_files], inputs=[image], label="Examples (validation tiles)",
                                example_labels=[Path(t).stem for t in example_files])
                    image.keep_in_cache.update(example_files)  # the cache clean-up must not take the examples
            with gr.Column(scale=3):
                slider = gr.ImageSlider(label="Before / after", type="filepath", format="png",
                                        elem_id="slider", max_height=640)
                status = gr.Markdown("", label="Status", elem_id="status")
                with gr.Row():
                    png_out = gr.File(label="Map (PNG)", elem_id="map_png")
                    tif_out = gr.File(label="Map (Cloud-Optimized GeoTIFF)", elem_id="map_tif")
                    gpkg_out = gr.File(label="Map layers (GeoPackage)", elem_id="map_gpkg")
                with gr.Accordion("The map alone", open=False):
                    map_out = gr.Image(label="Map", type="filepath", format="png", elem_id="map")
        inputs = [image, mode_in, seed_in, tta_in, scale_in, gsd_in, bands_in, stretch_in, range_in, weights_in]
        translating = button.click(translate, inputs, [png_out, slider, map_out, tif_out, status, gpkg_out],
                                   api_name="translate", concurrency_limit=concurrency)
        # not queued, so that a full queue or a busy slot never delays it
        stop_button.click(stop, None, None, api_name="stop", queue=False, cancels=[translating])
    demo.queue(max_size=queue, default_concurrency_limit=concurrency)
    return demo


def launch(demo: gr.Blocks, host="127.0.0.1", port=None, max_upload_mb=200, block=True):
    """Start the server and return its local URL (printed too unless block=False). block=False returns
    at once, for tests and notebooks; demo.close() stops it."""
    _, url, _ = demo.launch(server_name=host, server_port=port, max_file_size=int(max_upload_mb * 2 ** 20),
                            prevent_thread_lock=not block, inline=False, theme=THEME, css=CSS,
                            quiet=not block)
    return url


def main(argv=None):
    p = command_parser(__doc__.split("\n")[0])
    p.add_argument("--weights", help=f"the default model: {WEIGHTS_HELP} (default: the newest weights/*/G.pt, "
                   f"else sat2map); the page offers it, every run under weights/ and the pretrained names")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on; anything but 127.0.0.1 lets other machines use the app "
                        "(see docs/app.md) (default: $GRADIO_SERVER_NAME, set on Hugging Face Spaces, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default: $GRADIO_SERVER_PORT, else the first "
                   "free one from 7860)")
    p.add_argument("--examples", default="data/maps/val", help="folder of A|B pairs whose first tiles are "
                   "the page's examples (none if it is missing)")
    p.add_argument("--max-upload-mb", type=float, default=200, help="largest upload accepted")
    p.add_argument("--max-megapixels", type=float, default=MAX_MEGAPIXELS, help="a request that asks for more "
                   "work is refused before any: the larger of the input's size and its size after Scale or "
                   "Ground resolution, for PNG/JPEG and rasters alike")
    p.add_argument("--max-seconds", type=float, default=MAX_SECONDS, help="a translation still running this "
                   "long after it left the queue is stopped at its next tile, with a message")
    p.add_argument("--max-models", type=int, default=MAX_MODELS, help="generators kept loaded (one per model "
                   "and test-time mode); beyond, the least recently used is unloaded")
    p.add_argument("--queue", type=int, default=16, help="requests that may wait; beyond, a client is told "
                   "the queue is full and to try again")
    p.add_argument("--concurrency", type=int, default=1, help="translations run at once (one per model at most)")
    backends.add_flags(p, "eval-mode requests", "required with --int8", eval_mode=lambda args: True)
    add_device(p)
    args = p.parse_args(argv)
    for flag in ("--max-upload-mb", "--max-megapixels", "--max-seconds", "--max-models", "--queue", "--concurrency"):
        value = getattr(args, flag[2:].replace("-", "_"))
        if not value > 0:
            p.error(f"{flag} {value}: expected a positive number")
    if args.port is not None and not 0 <= args.port <= 65535:
        p.error(f"--port {args.port}: expected a port number from 0 to 65535")
    if args.int8 and args.calibrate is None:
        p.error("--int8 needs --calibrate FOLDER here: the server has no input to calibrate on before its requests")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` too ends through atexit's clean-up
    device = pick_device(args.device)
    backends.check_device(args.backend, device)
    demo = build_app(args.weights, "weights", device, args.examples, args.max_megapixels, args.queue,
                     args.concurrency, preload=True, max_seconds=args.max_seconds, max_models=args.max_models,
                     backend=args.backend, use_int8=args.int8, calibrate=args.calibrate)
    launch(demo, args.host, args.port, args.max_upload_mb)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
