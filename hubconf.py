"""torch.hub entry points.

    G = torch.hub.load("path/to/sat2map", "generator", source="local", weights="weights/maps/G.pt")
"""
dependencies = ["torch", "torchvision", "numpy", "PIL", "tqdm"]


def generator(weights=None, device="cpu", **kwargs):
    """The U-Net-256 generator: loaded from `weights` (a checkpoint, G.pt, an official .pth, or
    'sat2map' / 'map2sat'), or freshly initialised with Generator(**kwargs) when weights is None."""
    from generator import Generator, init_weights, load_generator
    if weights is None:
        return init_weights(Generator(**kwargs)).to(device)
    return load_generator(str(weights), device)[0]
