"""The CUDA code paths, checked on a CPU-only machine: capability queries and torch.distributed are
stood in for, CUDA tensors are fake (FakeTensorMode), compiled code is traced by dynamo alone.
tests/test_cuda.py runs the same paths on a real GPU.
"""
import signal
from collections import OrderedDict

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode

import backends
import bench
import cache
import dataset
import train as train_mod
from cli import InputError
from config import Config
from conftest import make_dataset, train
from discriminator import Discriminator
from generator import init_weights
from utils import amp_dtype, atomic_save, init_distributed, set_determinism, to_cpu


def tensors(obj):
    """Every tensor in nested dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else []
    return [t for v in values for t in tensors(v)]


# ----------------------------------------------------------------------------------------------------
# Mixed precision, checkpoints, the process-group backend


def test_determinism_is_switched_on_and_off_again():
    """--deterministic turns PyTorch's deterministic algorithms and cuDNN's on, and the next run without
    it turns them off (set_determinism calls PyTorch only when the setting changes)."""
    try:
        set_determinism(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
        set_determinism(False)
        assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
        assert torch.backends.cudnn.benchmark
    finally:
        set_determinism(False)


@pytest.mark.parametrize("capability, expected", [((7, 0), torch.float16), ((7, 5), torch.float16),
                                                  ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_amp_is_bf16_only_from_compute_capability_8(monkeypatch, capability, expected):
    """V100 (7.0) and T4 (7.5) get fp16: torch.cuda.is_bf16_supported() says yes there (emulation)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert amp_dtype("auto", torch.device("cuda")) == expected
    assert amp_dtype("off", torch.device("cuda")) is None and amp_dtype("bf16", torch.device("cuda")) == torch.bfloat16
    assert backends.amp_dtype is bench.amp_dtype is train_mod.amp_dtype is amp_dtype  # one rule everywhere


def test_saved_files_hold_cpu_tensors_whatever_device_trained(tmp_path, monkeypatch):
    """A GPU run's state (CUDA tensors, faked here) is saved as CPU tensors, with the state_dict's
    metadata kept; CPU tensors are saved as they are, not copied."""
    with FakeTensorMode():
        G = nn.Sequential(nn.Conv2d(3, 4, 3, device="cuda"), nn.BatchNorm2d(4, device="cuda"))
        opt = torch.optim.Adam(G.parameters())
        state = {"G": G.state_dict(), "opt": {"state": {0: {"step": torch.tensor(3.0, device="cuda")}},
                                                 "param_groups": opt.state_dict()["param_groups"]},
                 "rng": [{"cuda": [torch.zeros(2, dtype=torch.uint8)]}], "step": 7}
    assert {t.device.type for t in tensors(state)} == {"cuda", "cpu"}
    saved = []
    monkeypatch.setattr(torch, "save", lambda obj, f: saved.append(obj))
    atomic_save(state, tmp_path / "last.pt")
    out = saved[0]
    assert len(tensors(out)) == len(tensors(state)) and all(t.device.type == "cpu" for t in tensors(out))
    assert isinstance(out["G"], OrderedDict) and out["G"]._metadata == state["G"]._metadata
    assert out["step"] == 7 and out["opt"]["param_groups"] == state["opt"]["param_groups"]
    x = torch.ones(2)
    assert to_cpu({"a": [x]})["a"][0] is x


def test_backend_follows_the_device_not_the_node(monkeypatch):
    """torchrun --device cpu on a GPU node takes gloo (NCCL cannot carry CPU tensors); NCCL only for
    CUDA, where LOCAL_RANK must name a visible GPU."""
    joined, chosen = [], []
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: joined.append(backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    assert init_distributed("cpu") == (0, 2) and joined == ["gloo"] and chosen == []
    with pytest.raises(InputError, match="LOCAL_RANK 1: this node has 1 visible GPU"):
        init_distributed("auto")
    monkeypatch.setenv("LOCAL_RANK", "0")
    init_distributed("cuda")
    assert joined == ["gloo", "nccl"] and chosen == [0]


# ----------------------------------------------------------------------------------------------------
# Signals: handlers given back, a stop agreed without a sync per step


@pytest.fixture
def own_handler():
    """A SIGTERM handler of the test's own, in place while the test runs."""
    def handler(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, handler)
    yield handler
    signal.signal(signal.SIGTERM, previous)


def test_a_run_gives_back_the_signal_handlers_it_found(tmp_path, own_handler, monkeypatch):
    """Tests and notebooks call train.main in a process that must stay stoppable: the handlers it
    found return whether the run ends or raises."""
    data = make_dataset(tmp_path / "data", n_train=2, n_val=1)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def crash(*args, **kw):
        assert signal.getsignal(signal.SIGTERM) is not own_handler  # the run's own, while it trains
        raise RuntimeError("boom")

    monkeypatch.setattr(train_mod, "gan_step", crash)
    with pytest.raises(RuntimeError, match="boom"):
        train("--data-root", data, "--run-dir", tmp_path / "crash", "--max-steps", 1, "--no-validate",
              "--num-samples", 1)
    assert {s: signal.getsignal(s) for s in before} == before and before[signal.SIGTERM] is own_handler
    monkeypatch.setattr(train_mod, "fit", lambda cfg, stop: stop.install())  # a run that ends
    train_mod.main(Config())
    assert {s: signal.getsignal(s) for s in before} == before


def test_processes_agree_on_a_stop_at_fixed_steps_only(monkeypatch):
    """Under torch.distributed the flag is all-reduced (a host sync) only every STOP_EVERY steps and at
    log points, the same steps on every process; alone, every step reads it (no sync needed)."""
    asked = []
    monkeypatch.setattr(train_mod, "all_agree", lambda flag, device: asked.append(step) or flag)
    stop, device = train_mod.StopFlag(), torch.device("cpu")
    for step in range(1, 61):
        stop.set = step >= 13
        assert stop.agreed(step, 25, device) == (step >= 13)
    assert asked == list(range(1, 61))
    asked.clear()
    monkeypatch.setattr(train_mod.dist, "is_initialized", lambda: True)
    agreed = []
    for step in range(1, 61):
        stop.set = step >= 13
        agreed.append(stop.agreed(step, 25, device))
    assert train_mod.STOP_EVERY == 10 and asked == [10, 20, 25, 30, 40, 50, 60]
    assert agreed.index(True) + 1 == 20  # the signal at step 13 stops every process after step 20


# ----------------------------------------------------------------------------------------------------
# The compiled step: D's inputs, CUDA-graph step marks


def tiny_step_setup(amp: str, size=32):
    """A stand-in G (one conv: gan_step only calls it) and a real D on 32 px pairs, channels-last."""
    torch.manual_seed(0)
    cfg = Config(ngf=8, ndf=8, amp=amp)
    G = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Tanh()).to(memory_format=torch.channels_last)
    D = init_weights(Discriminator(6, 8)).to(memory_format=torch.channels_last)
    opt_G, opt_D = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batch = torch.randint(0, 256, (2, 6, size, size), dtype=torch.uint8)
    real_A, real_B = train_mod.to_pair(batch, cfg, torch.device("cpu"), torch.channels_last)
    return cfg, G, D, opt_G, opt_D, scaler, real_A, real_B


@pytest.mark.parametrize("amp", ["bf16", "off"])
def test_D_gets_both_images_in_one_dtype_and_layout_with_the_same_values(amp):
    cfg, G, D, opt_G, opt_D, scaler, real_A, real_B = tiny_step_setup(amp)
    seen = []

    def D_train(a, b):
        seen.append((b.dtype, b.stride(), b.shape, b.detach().float().clone()))
        return D(a, b)

    dtype = amp_dtype(amp, torch.device("cpu"))
    with torch.autocast("cpu", dtype, enabled=dtype is not None), torch.no_grad():
        direct = D(real_A, real_B)  # D on the float channel slice, as before
        same = D(real_A, real_B.to(dtype or torch.float32))
    assert torch.equal(direct, same)  # autocast rounds D's input to that dtype anyway
    train_mod.gan_step(G, D_train, D, opt_G, opt_D, scaler, real_A, real_B, cfg, dtype, torch.device("cpu"))
    (fake, real) = seen
    assert fake[:3] == real[:3] and real[0] == (dtype or torch.float32)
    assert torch.equal(real[3], real_B.to(real[0]).float())


def test_D_is_compiled_once_per_run(monkeypatch):
    """Dynamo alone (backend eager, no code generation) guards on dtype and strides as inductor does:
    one compiled frame for D over two steps, none recompiled."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    cfg, G, D, opt_G, opt_D, scaler, real_A, real_B = tiny_step_setup("bf16")
    torch._dynamo.reset()
    counters.clear()
    D_train = torch.compile(D, backend="eager")
    try:
        for _ in range(2):
            train_mod.gan_step(G, D_train, D, opt_G, opt_D, scaler, real_A, real_B, cfg, torch.bfloat16,
                               torch.device("cpu"))
        assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    finally:
        torch._dynamo.reset()


def test_both_cuda_graph_modes_mark_step_boundaries(monkeypatch):
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(cfg.compile))
    _, G, D, opt_G, opt_D, scaler, real_A, real_B = tiny_step_setup("off")
    for mode in ("off", "default", "reduce-overhead", "max-autotune"):
        cfg = Config(ngf=8, ndf=8, compile=mode)
        train_mod.gan_step(G, D, D, opt_G, opt_D, scaler, real_A, real_B, cfg, None, torch.device("cpu"))
    assert marks == ["reduce-overhead", "max-autotune"]


# ----------------------------------------------------------------------------------------------------
# The data path: pinned only for CUDA, one batch ahead, the same stream


def test_prefetch_keeps_the_stream_and_pins_nothing_for_the_cpu(tmp_path, monkeypatch):
    def no_pin(self, *args, **kw):
        raise AssertionError("pinned memory requested for a CPU run")

    monkeypatch.setattr(torch.Tensor, "pin_memory", no_pin)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU node, training on its CPU
    drawn = []

    def source():
        for i in range(4):
            drawn.append(i)
            yield torch.full((1, 6, 2, 2), i, dtype=torch.uint8)

    seen = [(int(b[0, 0, 0, 0]), len(drawn)) for b in cache.prefetch(source(), torch.device("cpu"))]
    assert seen == [(0, 2), (1, 3), (2, 4), (3, 4)]  # in order, each handed out once the next is drawn

    root = make_dataset(tmp_path / "d", n_train=2, n_val=1)
    pairs, _ = dataset.list_pairs(root, "train")
    loaders = []
    real_loader = torch.utils.data.DataLoader
    monkeypatch.setattr(torch.utils.data, "DataLoader", lambda *a, **kw: loaders.append(kw) or real_loader(*a, **kw))
    cfg = Config(workers=0, batch_size=1)
    rows = torch.tensor([[[0, 0, 0, 0]], [[1, 30, 30, 1]]])  # (steps, B, (index, y, x, flip))
    via_loader = list(train_mod.epoch_batches(dataset.PILPairs(pairs, 286, 256), rows, cfg, torch.device("cpu")))
    from_cache = list(train_mod.epoch_batches(cache.CachedPairs(pairs, 286, crop=256), rows, cfg, torch.device("cpu")))
    assert loaders[0]["pin_memory"] is False
    assert [b.shape for b in via_loader] == [b.shape for b in from_cache] == [(1, 6, 256, 256)] * 2
    assert all(torch.equal(a, b) for a, b in zip(via_loader, from_cache))
