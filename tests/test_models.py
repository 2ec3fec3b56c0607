"""Generator and discriminator: the paper's sizes, shapes, ranges and initialisation."""
import pytest
import torch

from discriminator import Discriminator
from generator import Generator, init_weights, inference


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_match_official_unet256_and_patchgan():
    assert n_params(Generator()) == 54_413_955
    assert n_params(Discriminator()) == 2_768_705


def test_generator_shape_and_tanh_range():
    G = init_weights(Generator(ngf=8))
    x = torch.randn(2, 3, 256, 256) * 3  # outside [-1, 1] on purpose: the output must still be inside
    y = G(x)
    assert y.shape == (2, 3, 256, 256)
    assert y.abs().max() <= 1.0 and y.std() > 0


def test_full_size_generator_and_patch_output():
    torch.manual_seed(0)
    G, D = init_weights(Generator()), init_weights(Discriminator())
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        assert G(x).shape == (1, 3, 256, 256)
        assert D(x, x).shape == (1, 1, 30, 30)
        assert D(torch.zeros(1, 3, 512, 256), torch.zeros(1, 3, 512, 256)).shape == (1, 1, 62, 30)


def test_init_is_normal_0_02():
    torch.manual_seed(0)
    G = init_weights(Generator())
    w = torch.cat([m.weight.flatten() for m in G.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(w.mean().item()) < 1e-3 and w.std().item() == pytest.approx(0.02, rel=0.02)
    bn = torch.cat([m.weight for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert bn.mean().item() == pytest.approx(1.0, abs=0.01) and bn.std().item() == pytest.approx(0.02, rel=0.2)


def test_dropout_sits_in_three_decoder_blocks():
    G = Generator()
    drops = [name for name, m in G.named_modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == ["ups.0.drop", "ups.1.drop", "ups.2.drop"]
    assert all(G.get_submodule(n).p == 0.5 for n in drops)


def test_instance_norm_variant_has_biases_and_no_running_stats():
    G = Generator(ngf=8, norm="instance")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in G.modules())
    assert G.downs[0].conv.bias is not None


def test_test_mode_paper_is_reproducible_and_leaves_no_trace():
    torch.manual_seed(0)
    G = init_weights(Generator(ngf=8)).train()
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    before = {k: v.clone() for k, v in G.state_dict().items()}
    rng = torch.get_rng_state()
    with inference(G, paper=True, seed=1):
        y1 = G(x)
    with inference(G, paper=True, seed=1):
        y2 = G(x)
    with inference(G, paper=True, seed=2):
        y3 = G(x)
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)  # dropout on, seeded
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())  # running stats untouched
    assert torch.equal(rng, torch.get_rng_state()) and G.training
    with inference(G, paper=False):
        e1 = G(x)
    with inference(G, paper=False, seed=5):
        e2 = G(x)
    assert torch.equal(e1, e2) and not torch.equal(e1, y1)
