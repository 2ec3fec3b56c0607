"""GAN losses, the WGAN-GP gradient penalty and the learning-rate policies of the official pix2pix code.

    python train.py --gan-mode wgangp --lr-policy cosine     # see docs/options.md

--gan-mode vanilla (the paper) is BCE on logits, lsgan least squares, wgangp the Wasserstein loss with
the gradient penalty of Gulrajani et al. 2017 (weight --lambda-gp, 0 leaves it out as the official
pix2pix model does). --lr-policy linear (the paper) keeps the rate for --epochs epochs and decays it
linearly to 0 over --epochs-decay; step, plateau and cosine are the official alternatives.
"""
import torch
import torch.distributed as dist
import torch.nn.functional as F

GAN_MODES = ("vanilla", "lsgan", "wgangp")
LR_POLICIES = ("linear", "step", "plateau", "cosine")


def gan_loss(pred: torch.Tensor, real: bool, mode: str) -> torch.Tensor:
    """The loss of D's logits `pred` against an all-real or all-fake target."""
    if mode == "wgangp":
        return -pred.mean() if real else pred.mean()
    target = torch.ones_like(pred) if real else torch.zeros_like(pred)
    if mode == "lsgan":
        return F.mse_loss(pred, target)
    return F.binary_cross_entropy_with_logits(pred, target)


def gradient_penalty(D, real_A: torch.Tensor, real_B: torch.Tensor, fake_B: torch.Tensor,
                     weight: float = 10.0) -> torch.Tensor:
    """WGAN-GP: weight * E[(||grad D(x)|| - 1)^2] at x between the real and the generated pair, one
    uniform mix per image; the gradient is taken over D's whole input (condition and image), as the
    official `cal_gradient_penalty` ('mixed', constant 1) takes it. D must be the bare module: the
    penalty differentiates twice, which neither torch.compile nor DDP's hooks allow."""
    alpha = torch.rand(real_B.shape[0], 1, 1, 1, device=real_B.device)
    mixed_B = (alpha * real_B + (1 - alpha) * fake_B.detach()).requires_grad_(True)
    cond = real_A.detach().requires_grad_(True)  # the condition is the same in both pairs
    out = D(cond, mixed_B)
    grads = torch.autograd.grad(out.float().sum(), (cond, mixed_B), create_graph=True)
    norm = (torch.cat([g.flatten(1) for g in grads], 1).float() + 1e-16).norm(2, dim=1)
    return weight * ((norm - 1) ** 2).mean()


class L1Plateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """The official plateau policy (factor 0.2 after 5 epochs without a 1% improvement) fed, at each
    epoch's end, the epoch's mean generator L1 loss over every process. The official pix2pix model feeds
    it a constant 0 instead, which makes it a step decay every 6 epochs. The running sum lives in the
    state dict, so a run resumed in mid-epoch decides exactly as an uninterrupted one."""

    def __init__(self, opt):
        super().__init__(opt, mode="min", factor=0.2, threshold=0.01, patience=5)
        self.l1_sum, self.l1_count = 0.0, 0

    def observe(self, loss_G_l1: torch.Tensor):
        """Add one step's L1 loss (a tensor, summed on its device: no host sync per step)."""
        self.l1_sum = self.l1_sum + loss_G_l1.detach().float()
        self.l1_count += 1

    def step(self, metrics=None):
        if metrics is None:
            total = torch.as_tensor(self.l1_sum, dtype=torch.float32).clone()
            if dist.is_initialized():
                dist.all_reduce(total)
                total /= dist.get_world_size()
            metrics = total.item() / max(self.l1_count, 1)
            self.l1_sum, self.l1_count = 0.0, 0
        super().step(metrics)

    def load_state_dict(self, state):
        super().load_state_dict(state)
        device = self.optimizer.param_groups[0]["params"][0].device
        if isinstance(self.l1_sum, torch.Tensor):
            self.l1_sum = self.l1_sum.to(device)


def make_scheduler(opt, cfg):
    """The learning-rate schedule --lr-policy names, stepped once per epoch (as the official code does;
    --lr-decay-iters counts epochs there too). linear: constant for --epochs epochs, then linear
    towards 0 over --epochs-decay epochs (the last one at lr / (epochs_decay + 1)), the paper's schedule."""
    sched = torch.optim.lr_scheduler
    if cfg.lr_policy == "linear":
        return sched.LambdaLR(opt, lambda epoch: 1.0 - max(0, epoch + 1 - cfg.epochs) / float(cfg.epochs_decay + 1))
    if cfg.lr_policy == "step":
        return sched.StepLR(opt, step_size=cfg.lr_decay_iters, gamma=0.1)
    if cfg.lr_policy == "plateau":
        return L1Plateau(opt)
    if cfg.lr_policy == "cosine":
        return sched.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=0)
    raise ValueError(f"--lr-policy must be one of {', '.join(LR_POLICIES)}, got {cfg.lr_policy!r}")
