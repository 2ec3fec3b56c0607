"""torch.hub entry points.

    G = torch.hub.load("path/to/sat2map", "generator", source="local", weights="weights/maps/G.pt")
    G = torch.hub.load("path/to/sat2map", "generator", source="local", netG="resnet_9blocks", norm="instance")
"""
dependencies = ["torch", "torchvision", "numpy", "PIL", "tqdm"]


def generator(weights=None, device="cpu", **kwargs):
    """A pix2pix generator loaded from `weights` (a checkpoint, G.pt, an official *_net_G.pth of any
    --netG, or an official pretrained name: sat2map, map2sat, facades_label2photo, edges2shoes,
    edges2handbags, day2night), its architecture rebuilt from the file; or, when weights is None, freshly
    initialised with define_G(**kwargs) (netG, ngf, norm, dropout; default the paper's U-Net-256)."""
    from generator import define_G, init_weights, load_generator
    if weights is None:
        return init_weights(define_G(**kwargs)).to(device)
    return load_generator(str(weights), device)[0]
