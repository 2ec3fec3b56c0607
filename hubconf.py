"""torch.hub entry points.

    G = torch.hub.load("path/to/sat2map", "generator", source="local", weights="weights/maps/G.pt")
"""
dependencies = ["torch", "torchvision", "numpy", "PIL", "tqdm"]


def generator(weights=None, device="cpu", **kwargs):
    """The U-Net-256 generator: loaded from `weights` (a checkpoint, G.pt, an official .pth, or
    'sat2map' / 'map2sat'), or freshly initialised with Generator(**kwargs) when weights is None.

    It comes back in train mode (as load_state_dict leaves it), float32, on `device`: calling it as it
    is would update the BatchNorm running statistics and draw fresh dropout masks. Input (N, 3, H, W)
    in [-1, 1], H and W multiples of 256; output the same shape and range. For the paper's test-time
    mode use `with generator.inference(G, paper=True, seed=0): G(x)`; for the deterministic eval mode
    (running statistics, no dropout) `G.eval()` or `inference(G, paper=False)`."""
    from generator import Generator, init_weights, load_generator
    if weights is None:
        return init_weights(Generator(**kwargs)).to(device)
    return load_generator(str(weights), device)[0]
