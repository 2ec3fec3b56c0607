"""torch.hub entry points.

    G = torch.hub.load("path/to/sat2map", "generator", source="local", weights="weights/maps/G.pt")
    G = torch.hub.load("path/to/sat2map", "generator", source="local", netG="resnet_9blocks", norm="instance")
"""
dependencies = ["torch", "torchvision", "numpy", "PIL", "tqdm"]


def generator(weights=None, device="cpu", **kwargs):
    """A pix2pix generator loaded from `weights` (a checkpoint, G.pt, an official *_net_G.pth of any
    --netG, or an official pretrained name: sat2map, map2sat, facades_label2photo, edges2shoes,
    edges2handbags, day2night), its architecture rebuilt from the file; or, when weights is None, freshly
    initialised with define_G(**kwargs) (netG, ngf, norm, dropout; default the paper's U-Net-256).

    It comes back in train mode (as load_state_dict leaves it), float32, on `device`: calling it as it
    is would update the BatchNorm running statistics and draw fresh dropout masks. Input (N, 3, H, W)
    in [-1, 1], H and W multiples of 256 (128 for unet_128, 4 for the ResNets); output the same shape
    and range. For the paper's test-time mode use `with generator.inference(G, paper=True, seed=0):
    G(x)`; for the deterministic eval mode (running statistics, no dropout) `G.eval()` or
    `inference(G, paper=False)`."""
    from generator import define_G, init_weights, load_generator
    if weights is None:
        return init_weights(define_G(**kwargs)).to(device)
    return load_generator(str(weights), device)[0]
