"""Translate satellite images or GeoTIFF scenes of any size into maps with a trained or pretrained generator.

    python predict.py --weights weights/maps/G.pt --input photo.jpg --out out/
    python predict.py --weights sat2map --input folder/ --out out/ --eval --scale 0.43
    python predict.py --weights sat2map --input data/maps/val --pairs --out out/
    python predict.py --weights sat2map --input scene.tif --out out/ --bands 3,2,1 --gsd 1.2 --eval
    python predict.py --weights sat2map --input scene.tif --out out/ --vector    # out/scene.tif and out/scene.gpkg
    torchrun --nproc-per-node 4 predict.py --weights sat2map --input region/ --out out/ --eval

PNG/JPEG go through PIL, anything else GDAL reads (GeoTIFF, VRT, JP2, ...) through rasterio, window by
window; both run the tile engine of tiles.py (overlapping tiles blended with a smooth window). A
georeferenced input gives OUT/<stem>.tif on its own grid, masked where it has no data; a generator of
grey images (--input-nc / --output-nc 1 in training) takes one band and writes one; --vector adds
OUT/<stem>.gpkg, the map's GIS layers (vector.py, docs/gis.md). Under torchrun
the processes share the files out by pixel count and cut a raster larger than a fair share into bands
of tile rows, one per process; rank 0 joins the bands. The output is the one-process output
(docs/inference-at-scale.md). Ctrl-C stops at the next tile and leaves no half-written file.
"""
import sys
import time
from pathlib import Path

import torch.distributed as dist
from tqdm import tqdm

import backends
import bounds
import dataset
import int8
import official
import parts
import raster
import tiles
import vector
from cli import Cancelled, InputError, command_parser, parse_list, report, run_command
from config import WEIGHTS_HELP, add_device
from durable import made_folder
from generator import channels
from utils import gather_objects, init_distributed, pick_device

SHOW_PIXELS = 1 << 21  # the progress bar appears from this many input pixels on (32 tiles of 256 px)


def parser():
    """predict.py's flags; the app (app.py) builds its options from these defaults too."""
    p = command_parser(__doc__.split("\n")[0])
    p.add_argument("--weights", required=True, help=WEIGHTS_HELP)
    p.add_argument("--input", required=True, help="an image or raster file, or a folder of them")
    p.add_argument("--out", required=True, help="folder for the results (same file stems)")
    p.rename("--output", "--out")
    p.add_argument("--format", choices=["png", "tif"], help="output format (default: tif, a Cloud-Optimized "
                   "GeoTIFF, for georeferenced rasters; png otherwise)")
    p.add_argument("--pairs", action="store_true", help="inputs are A|B pairs (a dataset split): "
                   "translate only the input half that --direction names")
    p.add_argument("--direction", choices=["AtoB", "BtoA"], help="with --pairs: which half is the input "
                   "(default: the weights' direction)")
    p.add_argument("--eval", action="store_true", help="running BatchNorm statistics, no dropout "
                   "(deterministic, tiles batched); default is the paper's test-time mode, seeded, one tile per batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the paper mode's dropout")
    p.add_argument("--tta", action="store_true", help="average each tile over its 8 flips/rotations (8x slower)")
    p.add_argument("--bands", help="rasters: the 1-based bands fed as R,G,B, e.g. 3,2,1 (one band: grey; the "
                   "one band of a grey generator); default: the bands marked red, green, blue, else 1,2,3 (a "
                   "grey generator: the only data band)")
    p.add_argument("--stretch", help="rasters: LOW,HIGH percentiles mapped to 0 and 255 per band, for data that "
                   "is not uint8 (default 2,98; given, it applies to uint8 too)")
    p.add_argument("--range", dest="value_range", help="rasters: MIN,MAX values mapped to 0 and 255 "
                   "instead of the percentile stretch")
    p.add_argument("--gsd", type=float, help="rasters: resample to this many metres per pixel before translating; "
                   "the result is written back on the input's grid")
    p.add_argument("--scale", type=float, default=1.0, help="resize inputs by this factor first (maps were "
                   "trained on 600 px tiles shown at 256 px: 256/600 = 0.43 matches that zoom); rasters are "
                   "written back on their own grid, PNG/JPEG at the new size")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"], help="precision of the "
                   "generator's weights and activations; auto: bf16 where the device runs it fast (CPUs with "
                   "native bf16, GPUs of compute capability 8 on), fp16 on older GPUs, else float32 (outputs "
                   "then differ from float32 by a level or two of 255)")
    p.add_argument("--tile", type=int, default=256, help="tile size in px, a multiple of 256")
    p.add_argument("--overlap", type=int, default=64, help="px shared by neighbouring tiles")
    p.add_argument("--batch", type=int, default=8, help="tiles per forward pass with --eval")
    p.add_argument("--block", type=int, default=4096, help="width in px of the column blocks a raster is "
                   "translated in; memory grows with it, never with the raster")
    p.add_argument("--pipeline", choices=["auto", "on", "off"], default="auto", help="read and write in threads "
                   "beside the network (same result); auto: on a GPU, and on a CPU only where the network's "
                   "threads (OMP_NUM_THREADS) leave a core free, as otherwise they take turns and it is slower")
    p.add_argument("--max-megapixels", type=float, help="inputs that ask for more work than this are refused "
                   "before any: the larger of their size and their size after --scale/--gsd, for PNG/JPEG and "
                   f"rasters alike (default: {dataset.MAX_PIXELS / 1e6:.0f} for PNG/JPEG, PIL's guard against "
                   "decompression bombs, as they are decoded whole; none for rasters, read window by window)")
    p.add_argument("--vector", action="store_true", help="also vectorise each map into OUT/<stem>.gpkg (vector.py's "
                   "layers with its defaults: water, park, highway and road polygons, road centerlines)")
    backends.add_flags(p)
    add_device(p)
    return official.register(p, "predict")


def main(argv=None):
    args, opts = parse(argv)
    return run(args, opts, raster.input_files(Path(args.input)))


def parse(argv=None) -> tuple:
    """predict.py's flags, checked (a bad one is a one-line usage error), and the per-file options."""
    p = parser()
    args = p.parse_args(argv)
    try:
        return args, options(args)
    except InputError as e:  # a malformed flag is a usage error
        p.error(str(e))


def load_net(args, device, opts: raster.Options, files: list[Path], rank: int, world: int):
    """backends.load with predict's flags: (net, config, choice). int8 calibrates on tiles of
    --calibrate, else of the inputs (all of them, so every process calibrates alike). Under torchrun
    rank 0 loads first: it alone probes, exports and quantizes, and the others find what it made."""
    calibration = raster.input_files(Path(args.calibrate), "--calibrate") if args.calibrate else files

    def tiles_of(config: dict):
        opts.direction = args.direction or config["direction"]  # --pairs reads the direction's half
        return int8.calibration_tiles(calibration, opts, in_channels=config["input_nc"])

    if rank > 0:
        dist.barrier()
    try:
        return backends.load(args.weights, device, args.backend, args.eval, args.amp, args.int8, tiles_of,
                             opts.engine.tile, opts.engine.batch, log=print if rank == 0 else None)
    finally:
        if rank == 0 and world > 1:
            dist.barrier()


def run(args, opts: raster.Options, files: list[Path]) -> int:
    """Translate the files (this process's share under torchrun); returns the exit status."""
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: is a file, expected a folder")
    stems = {}
    for f in files:
        stems.setdefault(f.stem, []).append(f.name)
    clashes = [names for names in stems.values() if len(names) > 1]
    if clashes:
        raise InputError(f"--input {args.input}: {' and '.join(clashes[0])} would both be written as "
                         f"{Path(clashes[0][0]).stem}.*; rename one, or translate them into separate --out folders")
    rank, world = init_distributed(args.device)
    try:
        G, config, choice = load_net(args, pick_device(args.device), opts, files, rank, world)
        official.check_generator(config, args.expect, args.weights)
        if args.vector and config["output_nc"] != 3:
            raise InputError(f"--vector: {args.weights} draws grey (1-band) images, and the GIS layers come from "
                             f"the palette's colours of RGB maps (vector.py); leave --vector out")
        opts.direction = args.direction or config["direction"]
        with made_folder(out_dir), bounds.ctrl_c_stops() as stop:  # the folder goes again if every input is skipped
            failed = translate_files(G, files, out_dir, opts, rank, world, stop, args.vector)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    done = len(files) - failed
    if rank == 0:
        print(f"translated {done} of {len(files)} input(s) into {out_dir} with {choice}" if done else
              f"translated none of {len(files)} input(s); nothing written")
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------------
# Sharing the work between processes (torchrun)


def share_work(files: list[Path], opts: raster.Options, world: int) -> list[list[tuple]]:
    """Each process's units of work, (file index, part or None, input pixels): a GDAL raster larger than
    a fair share is cut into one band per process (`part` = (k, n), band k to process k), the other
    files go whole, largest first, to the process with the least work so far."""
    pixels = [parts.input_pixels(f) for f in files]
    work, loads = [[] for _ in range(world)], [0] * world
    whole = []
    for i, f in enumerate(files):
        n = 1
        if world > 1 and not raster.is_picture(f) and pixels[i] > sum(pixels) / world:
            try:
                n = parts.parts_of(f, opts, world)
            except InputError:  # reported when the file is translated
                pass
        if n == 1:
            whole.append(i)
            continue
        for k in range(n):
            work[k].append((i, (k, n), pixels[i] // n))
            loads[k] += pixels[i] // n
    for i in sorted(whole, key=lambda i: (-pixels[i], i)):
        r = loads.index(min(loads))
        work[r].append((i, None, pixels[i]))
        loads[r] += pixels[i]
    return work


def translate_files(G, files: list[Path], out_dir: Path, opts: raster.Options, rank: int, world: int,
                    cancel=None, layers: bool = False) -> int:
    """Translate this process's share of the files (and vectorise each finished map, with `layers`);
    rank 0 then joins the parts of shared rasters and reports every failed input once. Returns the
    number of inputs that failed. cancel: the engine's cancel hook (tiles.Engine.run); once it says
    stop, Cancelled ends the whole job."""
    work = gather_objects(share_work(files, opts, world) if rank == 0 else None)[0]
    progress = JobProgress(sum(px for units in work for _, _, px in units), rank, world)
    failures = {}
    for i, part, px in work[rank]:
        try:
            bounds.check_size(files[i], opts)
            out = raster.predict_file(G, files[i], out_dir, opts, progress=progress.unit(px), part=part,
                                      cancel=cancel)
        except InputError as e:  # dataset.DataError is one too
            failures.setdefault(i, str(e))
        except Cancelled as e:
            raise Cancelled(f"{files[i]}: {e}; nothing of it was written") from None
        else:
            if layers and part is None:
                add_layers(out, cancel)
        progress.unit_done()
    progress.wait_for_all()
    for other in gather_objects(failures):
        for i, message in other.items():
            failures.setdefault(i, message)
    if rank == 0:
        shared = sorted({(i, part[1]) for units in work for i, part, _ in units if part is not None})
        for i, n in shared:
            if i in failures:
                parts.discard_parts(files[i], out_dir, n)
                continue
            try:
                out = parts.assemble(files[i], out_dir, opts, n, channels(G)[0])
            except InputError as e:
                failures[i] = str(e)
            else:
                if layers:
                    add_layers(out, cancel)
        for i in sorted(failures):
            report(f"{failures[i]}: skipped")
    # every process exits with rank 0's status, and only once rank 0 is done: torchrun stops the
    # others as soon as one process exits with an error
    return progress.agree(len(failures) if rank == 0 else None)


def add_layers(out: Path, cancel=None):
    """--vector: the GIS layers of the map `out` into <stem>.gpkg beside it (vector.layers_beside). A map
    with nothing to vectorise keeps its map, with a note; a stop while vectorising leaves the map and no
    layers."""
    try:
        _, why = vector.layers_beside(out, lambda done, rows: tiles.stop_if(cancel))
    except Cancelled as e:
        raise Cancelled(f"{out}: {e} while vectorising; the map is written, its layers are not") from None
    if why:
        report(f"note: {out}: no GIS layers: {why}")


class JobProgress:
    """The whole job's progress in megapixels of input, shown on rank 0. Every process adds what it has
    done to a counter in torch.distributed's key-value store (a plain number in a single process), and
    waits there for the others at the end, so that no collective call waits for long."""
    DONE, RANKS, FAILED = "predict/pixels_done", "predict/ranks_done", "predict/failed"

    def __init__(self, total_pixels: int, rank: int, world: int):
        self.store = dist.distributed_c10d._get_default_store() if world > 1 else None
        self.world, self.count, self.px, self.reported = world, 0, 0, 0
        self.bar = tqdm(total=round(total_pixels / 1e6, 1), desc="translate", unit="MP", dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} MP [{elapsed}<{remaining}]",
                        disable=rank != 0 or total_pixels < SHOW_PIXELS)

    def unit(self, pixels: int):
        """The progress callable of one unit of `pixels` input pixels (tiles.Engine.run's contract)."""
        self.px, self.reported = pixels, 0
        return self._tiles

    def _tiles(self, done: int, total: int):
        self._add(self.px * done // max(total, 1) - self.reported)

    def unit_done(self):
        self._add(self.px - self.reported)

    def _add(self, pixels: int):
        self.reported += pixels
        self.count = self.store.add(self.DONE, pixels) if self.store is not None else self.count + pixels
        self._show(self.count)

    def _show(self, count: int):
        if not self.bar.disable:
            self.bar.update(min(round(count / 1e6, 1), self.bar.total) - self.bar.n)

    def wait_for_all(self):
        if self.store is not None:
            self.store.add(self.RANKS, 1)
            while self.store.add(self.RANKS, 0) < self.world:
                self._show(self.store.add(self.DONE, 0))
                time.sleep(0.2)
            self._show(self.store.add(self.DONE, 0))
        self.bar.close()

    def agree(self, failed: int | None) -> int:
        """Rank 0's count of failed inputs, on every process once rank 0 has set it."""
        if self.store is None:
            return failed
        if failed is not None:
            self.store.set(self.FAILED, str(failed))
            return failed
        while not self.store.check([self.FAILED]):
            time.sleep(0.2)
        return int(self.store.get(self.FAILED))


def options(args) -> raster.Options:
    """The per-file options from parsed flags (predict's, or the app's on predict's defaults); a bad
    value raises InputError naming its flag."""
    if args.tile < 256 or args.tile % 256:
        raise InputError(f"--tile {args.tile}: expected a positive multiple of 256")
    if not 0 <= args.overlap < args.tile:
        raise InputError(f"--overlap {args.overlap}: expected a value in [0, --tile)")
    if not 0 < args.scale <= 64:
        raise InputError(f"--scale {args.scale}: expected a factor in (0, 64]")
    if args.gsd is not None and not 0 < args.gsd < 1e6:
        raise InputError(f"--gsd {args.gsd}: expected a positive ground resolution in metres per pixel")
    if args.gsd is not None and args.scale != 1.0:
        raise InputError("--gsd and --scale both set the working resolution: give one of them")
    if args.batch < 1:
        raise InputError(f"--batch {args.batch}: expected at least 1")
    if args.block < 256 or args.block % 256:
        raise InputError(f"--block {args.block}: expected a positive multiple of 256")
    if args.max_megapixels is not None and not args.max_megapixels > 0:
        raise InputError(f"--max-megapixels {args.max_megapixels}: expected a positive number")
    bands = None if args.bands is None else parse_list(args.bands, "--bands", int)
    stretch = parse_list(args.stretch or "2,98", "--stretch", float, 2)
    value_range = None if args.value_range is None else parse_list(args.value_range, "--range", float, 2)
    if not 0 <= stretch[0] < stretch[1] <= 100:
        raise InputError(f"--stretch {args.stretch}: expected LOW,HIGH percentiles with 0 <= LOW < HIGH <= 100")
    if value_range is not None and not value_range[0] < value_range[1]:
        raise InputError(f"--range {args.value_range}: expected MIN,MAX with MIN < MAX")
    if value_range is not None and args.stretch is not None:
        raise InputError("--range and --stretch both set the value scaling: give one of them")
    engine = tiles.Engine(args.tile, args.overlap, not args.eval, args.seed, args.batch, args.tta, args.block,
                          {"auto": None, "on": True, "off": False}[args.pipeline])
    max_pixels = None if args.max_megapixels is None else round(args.max_megapixels * 1e6)
    return raster.Options(engine, bands, tuple(stretch), args.stretch is not None,
                          None if value_range is None else tuple(value_range), args.scale, args.gsd, args.format,
                          args.pairs, max_pixels=max_pixels)


if __name__ == "__main__":
    sys.exit(run_command(main))
