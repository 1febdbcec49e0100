"""The original text-to-video GAN, in our own code.

Generator: a GRU runs over per-frame [noise; condition] to give one latent per
frame; 3D residual up-blocks (spatial x2 each) with conditional BatchNorm,
whose gain and bias are spectrally normalised linear maps of [noise;
condition]; a ConvGRU in the middle; a last conditional BatchNorm; tanh output.
Shape B,3,T,H,W.

Discriminators, both spectrally normalised projection discriminators:
``ImageD`` scores k random frames of each clip; ``VideoD`` runs 3D residual
down-blocks, a ConvGRU over what is left of time, 2D down-blocks, then the
projection of the condition.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as SN


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(biased variance, mean) per channel of a channels-last (B,C,T,H,W) tensor, from its
    (positions, C) view: a column sum and the diagonal of a C x C Gram matrix, one BLAS
    pass each; ``torch.var_mean`` over those dims is several times slower there."""
    xs = x.permute(0, 2, 3, 4, 1).reshape(-1, x.shape[1])  # a view: channels are innermost
    n = xs.shape[0]
    mean = xs.sum(0) / n
    return ((xs.T @ xs).diagonal() / n - mean * mean).clamp_min(0), mean


def cpu_channels_last(x: torch.Tensor) -> bool:
    """A float32 CPU activation stored channels-last (what debug_cpu's convs give)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and not x.is_contiguous() \
        and x.is_contiguous(memory_format=torch.channels_last_3d)


class CBN3d(nn.Module):
    def __init__(self, ch: int, y_dim: int):
        super().__init__()
        self.bn = nn.BatchNorm3d(ch, affine=False)
        self.gain = SN(nn.Linear(y_dim, ch))
        self.bias = SN(nn.Linear(y_dim, ch))

    def forward(self, x, y):
        g, b = 1 + self.gain(y), self.bias(y)
        # CPU PyTorch's BatchNorm is slow on channels-last tensors of few channels, and the
        # generator's full-resolution BNs were the costliest ops of a debug_cpu step.
        # `bench/cbn.py` times both paths; docs/benchmarks.md has the numbers.
        return self.affine(x, g, b) if cpu_channels_last(x) else self.batchnorm(x, g, b)

    def batchnorm(self, x, g, b):
        """BatchNorm3d's kernel, then the per-sample gain g and bias b (B, C)."""
        return self.bn(x) * g[:, :, None, None, None] + b[:, :, None, None, None]

    def affine(self, x, g, b):
        """The same normalisation as one per-sample affine x * scale + shift, with the
        statistics kept as BatchNorm keeps them (biased variance to normalise, unbiased for
        the running estimate)."""
        bn = self.bn
        if self.training:
            var, mean = channel_stats(x)
            with torch.no_grad():
                n = x.numel() // x.shape[1]
                bn.running_mean.lerp_(mean, bn.momentum)
                bn.running_var.lerp_(var * (n / max(n - 1, 1)), bn.momentum)
                bn.num_batches_tracked.add_(1)
        else:
            var, mean = bn.running_var, bn.running_mean
        scale = g * torch.rsqrt(var + bn.eps)
        shift = b - mean * scale
        return torch.addcmul(shift[:, :, None, None, None], x, scale[:, :, None, None, None])


class ConvGRU(nn.Module):
    """A GRU whose gates are 3x3 convolutions, run over time: (B,C,T,H,W) -> (B,H_,T,H,W)."""

    def __init__(self, cin: int, hidden: int, sn: bool = False):
        super().__init__()
        wrap = SN if sn else (lambda m: m)
        self.hidden = hidden
        self.gates = wrap(nn.Conv2d(cin + hidden, 2 * hidden, 3, padding=1))
        self.cand = wrap(nn.Conv2d(cin + hidden, hidden, 3, padding=1))

    def forward(self, x):
        b, cin, t, h, w = x.shape
        wg, wc = self.gates.weight, self.cand.weight  # read once: spectral norm recomputes on access
        # A gate's convolution of [x; state] is a conv of x plus a conv of state. The x half
        # depends on no state, so it runs once over all frames as one batch; only the state
        # half stays in the loop over time (same weights, same result, half the loop's work).
        frames = x.transpose(1, 2).reshape(b * t, cin, h, w)
        gx = F.conv2d(frames, wg[:, :cin], self.gates.bias, padding=1).view(b, t, -1, h, w)
        cx = F.conv2d(frames, wc[:, :cin], self.cand.bias, padding=1).view(b, t, -1, h, w)
        state = x.new_zeros(b, self.hidden, h, w)
        outs = []
        for i in range(t):
            z, r = torch.sigmoid(gx[:, i] + F.conv2d(state, wg[:, cin:], padding=1)).chunk(2, 1)
            n = torch.tanh(cx[:, i] + F.conv2d(r * state, wc[:, cin:], padding=1))
            state = (1 - z) * state + z * n
            outs.append(state)
        return torch.stack(outs, 2)


class TimeConv(nn.Conv3d):
    """A (3,1,1) convolution over time, run as a 2D convolution of the (T, H*W) view. Same
    weights, same state_dict, same result to float rounding; CPU PyTorch has no fast kernel
    for this 3D shape (a fifth of a one-thread debug_cpu step, docs/benchmarks.md)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x):
        b, c, t, h, w = x.shape
        y = F.conv2d(x.reshape(b, c, t, h * w), self.weight.squeeze(-1), self.bias, padding=(1, 0))
        return y.view(b, -1, t, h, w)


def conv3d(cin: int, cout: int, factorized: bool, temporal: bool = True) -> nn.Module:
    """A 3x3x3 convolution, or its (2+1)D factorisation (arXiv 1711.11248): 3x3 in space,
    then 3 in time. The same receptive field from 9 + 3 taps instead of 27; the generator's
    full-resolution 3D convolutions are most of a CPU step (docs/quality.md has the timings).
    ``temporal=False``: the 3x3 in space alone, each frame on its own."""
    if temporal and not factorized:  # built only when used: an unused conv would move the init's RNG stream
        return nn.Conv3d(cin, cout, 3, padding=1)
    space = nn.Conv3d(cin, cout, (1, 3, 3), padding=(0, 1, 1))
    return nn.Sequential(space, TimeConv(cout, cout)) if temporal else space


class GBlock(nn.Module):
    def __init__(self, cin: int, cout: int, y_dim: int, factorized: bool = False, temporal: bool = True):
        super().__init__()
        self.n1, self.n2 = CBN3d(cin, y_dim), CBN3d(cout, y_dim)
        self.c1 = conv3d(cin, cout, factorized, temporal)
        self.c2 = conv3d(cout, cout, factorized, temporal)
        self.sc = nn.Conv3d(cin, cout, 1)

    def forward(self, x, y):
        up = lambda v: F.interpolate(v, scale_factor=(1, 2, 2), mode="nearest")  # noqa: E731  space only
        h = self.c1(up(F.relu(self.n1(x, y))))
        h = self.c2(F.relu(self.n2(h, y)))
        # A 1x1 conv commutes with nearest upsampling: run it at the low resolution, 4x fewer positions.
        return h + up(self.sc(x))


def split_cond(cond: torch.Tensor, parts) -> tuple[torch.Tensor, torch.Tensor]:
    """(motion, content) of a condition: with ``parts`` = (template dims, object dims...) the
    template words drive motion and the object words the content; without, both see all."""
    if not parts:
        return cond, cond
    return cond[:, :parts[0]], cond[:, parts[0]:]


def has_word_parts(parts) -> bool:
    """Whether a condition's parts are (template, head word, modifiers)."""
    return bool(parts) and len(parts) == 3


def need_word_parts(parts, what: str) -> None:
    """Refuse a lever that treats the object's head word and its modifiers apart without them."""
    if not has_word_parts(parts):
        raise ValueError(f"{what} needs condition parts (template, head word, modifiers)")


def up_blocks(size: int) -> int:
    """How many x2 up-blocks take G from 4x4 to ``size``."""
    n_up = int(math.log2(size // 4))
    if 4 * 2**n_up != size:
        raise ValueError(f"size must be 4 * 2^k, got {size}")
    return n_up


class Generator(nn.Module):
    """``parts``: (template dims, object dims...) of the condition. Then the GRU, which makes
    the motion, sees only the template words, and the conditional BatchNorms, which make
    the content, see only the object words (MoCoGAN's label-in-motion placement).

    ``frame_blocks``: the last N up-blocks, and the output conv, draw each frame on its own
    (space-only convs). Motion is then set at the coarse scales alone, and an object's fine
    detail is drawn the same way whatever its direction: in the 3D blocks a time conv sees a
    moving pattern shifted one way or the other, so a direction never trained with an object
    was a new input there (docs/quality.md, session 13).

    ``mod_blocks`` >= 0 (needs parts of (template, head word, modifiers)): the modifier words
    (the colour of "red square") reach only the last N up-blocks and the output BatchNorm; the
    blocks before see the head word (the shape) alone, so they can't tie an outline to a colour
    (meant for a held-out "red square" where red came only as planks and pillars; it read lower
    under both rulers, docs/quality.md, session 24). -1: every block sees every object word.

    ``gru_head`` (needs the same parts): the head word (the shape) also reaches the GRU, whose
    4x4 layouts set where the object is, so its extent can be laid out with its place; the
    colour words still reach only the BatchNorms, so no layout can depend on a colour (held-out
    compositions were drawn in the shape their colour had in training, docs/quality.md, session 25).

    ``layered`` (needs the same parts): the object is painted as a layer over the rest
    (FineGAN's mask-and-appearance split, arXiv 1811.11155). The up-blocks and the output
    BatchNorm see the head word alone and draw a background, an object mask and a shade;
    the modifier words reach nothing but one linear map to the layer's colour. So no colour
    word can change an outline: a "blue square" whose blue came only as planks gets the
    square's mask in blue (docs/quality.md, session 26)."""

    def __init__(self, cond_dim: int, z_dim: int = 64, ch: int = 32, frames: int = 16, size: int = 32,
                 gru_dim: int = 256, parts=None, factorized: bool = False, frame_blocks: int = 0,
                 mod_blocks: int = -1, gru_head: bool = False, layered: bool = False):
        super().__init__()
        self.parts = tuple(parts) if parts else None
        if gru_head:
            need_word_parts(self.parts, "gru_head")
        if layered:
            need_word_parts(self.parts, "layered")
            if mod_blocks >= 0:  # refused, not overridden: the caller asked for something else
                raise ValueError("mod_blocks does nothing with layered (the colour words reach no up-block)")
            mod_blocks = 0  # no up-block sees the colour; the output BatchNorm neither (forward)
        self.layered = layered
        # The GRU's words: the template, and with gru_head the head word after it.
        self.motion_dim = (self.parts[0] + (self.parts[1] if gru_head else 0)) if self.parts else cond_dim
        motion_dim, content_dim = self.motion_dim, (sum(self.parts[1:]) if self.parts else cond_dim)
        n_up = up_blocks(size)
        self.z_dim, self.frames = z_dim, frames
        widths = [ch * 2 ** min(3, n_up - i) for i in range(n_up + 1)]  # e.g. 8ch,4ch,2ch,ch
        y_dim = z_dim + content_dim
        self.gru = nn.GRU(z_dim + motion_dim, gru_dim, batch_first=True)
        self.fc = nn.Linear(gru_dim, widths[0] * 16)
        if not 0 <= frame_blocks <= n_up:
            raise ValueError(f"frame_blocks must be 0..{n_up}, got {frame_blocks}")
        if not -1 <= mod_blocks <= n_up:
            raise ValueError(f"mod_blocks must be -1..{n_up}, got {mod_blocks}")
        if mod_blocks >= 0:
            need_word_parts(self.parts, "mod_blocks")
        self.first_mod_block = 0 if mod_blocks < 0 else n_up - mod_blocks
        self.blocks = nn.ModuleList(GBlock(widths[i], widths[i + 1], y_dim, factorized, i < n_up - frame_blocks)
                                    for i in range(n_up))
        mid = n_up // 2  # the ConvGRU sits after the middle block
        self.mid = mid
        self.convgru = ConvGRU(widths[mid], widths[mid])
        # The content words modulate the last features too: the object's colour and outline
        # are drawn at full resolution (held-out compositions, docs/quality.md, session 7).
        self.out_bn = CBN3d(widths[-1], y_dim)
        # layered: RGB of what is behind the object, the object's mask and its shade.
        self.out = nn.Conv3d(widths[-1], 5 if layered else 3, (1, 3, 3) if frame_blocks else 3,
                             padding=(0 if frame_blocks else 1, 1, 1))
        self.paint = nn.Linear(self.parts[2], 3) if layered else None  # the layer's colour, from the modifiers
        self.widths = widths

    def noise(self, b: int, device) -> torch.Tensor:
        return torch.randn(b, self.frames, self.z_dim, device=device)  # B,T,Z

    def forward(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        b, t, _ = noise.shape
        content = split_cond(cond, self.parts)[1]
        motion = cond[:, :self.motion_dim]  # the template's block first, then the head word's
        h, _ = self.gru(torch.cat([noise, motion[:, None].expand(b, t, -1)], -1))  # B,T,G
        x = self.fc(h).view(b, t, self.widths[0], 4, 4).transpose(1, 2)  # B,C,T,4,4
        y = torch.cat([noise[:, 0], content], -1)  # what the CBN gains and biases see
        y_head = self.without_mods(y)
        for i, block in enumerate(self.blocks):
            if i == self.mid:
                x = x + self.convgru(x)
            x = block(x, y if i >= self.first_mod_block else y_head)
        if not self.layered:
            return torch.tanh(self.out(F.relu(self.out_bn(x, y))))  # B,3,T,H,W
        back, mask, shade = self.out(F.relu(self.out_bn(x, y_head))).split([3, 1, 1], 1)
        colour = torch.tanh(self.paint(cond[:, -self.parts[2]:]))[:, :, None, None, None]
        # The shade darkens the colour toward black (a digit card's ink); 1 is the flat colour.
        layer = (colour + 1) * torch.sigmoid(shade) - 1
        return torch.lerp(torch.tanh(back), layer, torch.sigmoid(mask))

    def without_mods(self, y: torch.Tensor) -> torch.Tensor:
        """y with the modifier words' block zeroed (the whitened mean: no colour in particular)."""
        if self.first_mod_block == 0:
            return y
        mods = self.parts[2]
        return torch.cat([y[:, :-mods], y.new_zeros(y.shape[0], mods)], 1)


def build_generator(cfg, cond_dim: int, parts) -> Generator:
    """G from a run's config: a TrainConfig's fields as a dict (a checkpoint's "config").
    Older checkpoints lack the newer keys; their defaults are what those runs had.
    ``g_layered`` applies where the vocab splits the object's words (a preset's default must
    work with any vocab mode); without that split G draws the object as the original did."""
    layered = cfg.get("g_layered", False) and has_word_parts(parts)
    return Generator(cond_dim, cfg["z_dim"], cfg["g_ch"], cfg["frames"], cfg["size"], cfg["gru_dim"], parts,
                     cfg.get("g_conv", "3d") == "2+1d", cfg.get("g_frame_blocks", 0),
                     cfg.get("g_mod_blocks", -1), cfg.get("g_gru_head", False), layered)


class DBlock(nn.Module):
    """Residual down-block with spectral norm, 2D or 3D (3D also halves time)."""

    def __init__(self, cin: int, cout: int, dims: int, down: bool = True, first: bool = False,
                 pool_first: bool = False):
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.pool = (F.avg_pool3d if dims == 3 else F.avg_pool2d) if down else None
        self.first = first
        # pool_first (first block only): pool after the first conv, so the second runs at a
        # half (2D) or an eighth (3D) of the positions. The video D's full-resolution
        # 3x3x3 conv was the costliest op of a CPU step (docs/quality.md).
        self.pool_first = pool_first and first and down
        self.c1 = SN(conv(cin, cout, 3, padding=1))
        self.c2 = SN(conv(cout, cout, 3, padding=1))
        self.sc = SN(conv(cin, cout, 1))

    def forward(self, x):
        if self.pool_first:
            return self.c2(F.relu(self.pool(self.c1(x), 2))) + self.sc(self.pool(x, 2))
        h = self.c1(x if self.first else F.relu(x))
        h = self.c2(F.relu(h))
        s = self.sc(x)
        if self.pool:
            h, s = self.pool(h, 2), self.pool(s, 2)
        return h + s


class Projection(nn.Module):
    """Projection discriminator head: linear(phi) + <embed(cond), phi>."""

    def __init__(self, ch: int, cond_dim: int):
        super().__init__()
        self.lin = SN(nn.Linear(ch, 1))
        self.embed = SN(nn.Linear(cond_dim, ch))

    def forward(self, phi, cond):
        return self.lin(phi).squeeze(1) + (self.embed(cond) * phi).sum(1)


# The 48 colour scrambles of an RGB frame in [-1, 1]: a channel order times a sign per channel.
SCRAMBLES = torch.tensor([[s * (c + 1) for c, s in zip(order, signs)] for order in itertools.permutations(range(3))
                          for signs in itertools.product((1, -1), repeat=3)])


def scramble_colours(frames: torch.Tensor, which: torch.Tensor | None = None) -> torch.Tensor:
    """Each (N,3,H,W) frame with its channels reordered and negated (scramble ``which[i]``,
    default at random): outlines, glyphs and contrast survive, which colour an object is does
    not. The scrambles form a group, so over all of them a view can't tell one colour from another."""
    if which is None:
        which = torch.randint(len(SCRAMBLES), (frames.shape[0],), device=frames.device)
    pick = SCRAMBLES.to(frames.device)[which]
    chans = frames.gather(1, (pick.abs() - 1)[:, :, None, None].expand(-1, -1, *frames.shape[2:]))
    return chans * pick.sign().to(frames.dtype)[:, :, None, None]


def soft_max_pool(x: torch.Tensor) -> torch.Tensor:
    """(N,C,H,W) -> (N,C): each channel's softmax-weighted mean over positions. Like a max it
    reads what a frame shows, not how much of it (positions that tie share the weight, so an
    object's area does not count), but its gradient reaches every position near the top, where
    a hard max's reaches one pixel a channel."""
    x = x.flatten(2)
    return (x.softmax(-1) * x).sum(-1)


class ImageD(nn.Module):
    """Scores single frames; with ``parts`` it judges them against the object words only (a
    still frame can't show a direction).

    ``views="factor"`` (needs parts of (template, head word, modifiers)): each word block is
    judged on a view that shows only its own attribute. The head word (the shape) is scored on
    frames whose colours are scrambled (``scramble_colours``), the modifiers (the colour) on a
    bag of pixel colours: 1x1 convs, then a soft max over positions (``soft_max_pool``), which
    keeps what colours a frame shows and not the shape or size of where. The joint projection
    is a sum over blocks on one feature vector, so where blue only ever came as a thin plank,
    "blue" could also mean "thin", and a held-out "blue square" be judged fake (docs/quality.md,
    session 20)."""

    def __init__(self, cond_dim: int, ch: int = 32, size: int = 32, k: int = 4, parts=None,
                 pool_first: bool = False, views: str = "joint"):
        super().__init__()
        self.parts = tuple(parts) if parts else None
        if views == "factor":
            need_word_parts(self.parts, "views='factor'")
        self.factor = views == "factor"
        if self.parts:
            cond_dim = sum(self.parts[1:])
        n = int(math.log2(size // 4))
        widths = [3] + [ch * 2 ** min(i, 3) for i in range(n + 1)]
        self.k = k
        self.blocks = nn.Sequential(*[DBlock(widths[i], widths[i + 1], 2, down=i < n, first=i == 0,
                                             pool_first=pool_first)
                                      for i in range(n + 1)])
        self.width = widths[-1]
        if self.factor:
            self.colours = nn.Sequential(SN(nn.Conv2d(3, self.width, 1)), nn.ReLU(),
                                         SN(nn.Conv2d(self.width, self.width, 1)))
            self.head = Projection(self.width, self.parts[1])
            self.head_mod = Projection(self.width, self.parts[2])
        else:
            self.head = Projection(self.width, cond_dim)

    def features(self, video):
        """(B*k, C): the pooled features of k random frames per clip ([shape; colour] when factored)."""
        b, c, t, h, w = video.shape
        idx = torch.randint(t, (b, self.k), device=video.device)  # k random frames per clip
        frames = video.transpose(1, 2)[torch.arange(b, device=video.device)[:, None], idx]  # B,k,C,H,W
        frames = frames.reshape(b * self.k, c, h, w)
        if not self.factor:
            return F.relu(self.blocks(frames)).sum((2, 3))
        shape = F.relu(self.blocks(scramble_colours(frames))).sum((2, 3))
        return torch.cat([shape, soft_max_pool(F.relu(self.colours(frames)))], 1)

    def words(self, cond):
        """The part of a caption this D reads: the object's words (a still frame shows no direction)."""
        return split_cond(cond, self.parts)[1]

    def score(self, phi, cond):
        cond = self.words(cond).repeat_interleave(self.k, 0)
        if not self.factor:
            return self.head(phi, cond).view(-1, self.k)
        head, mods = cond.split(self.parts[1:], 1)
        shape, colour = phi.split(self.width, 1)
        return (self.head(shape, head) + self.head_mod(colour, mods)).view(-1, self.k)

    def forward(self, video, cond):
        return self.score(self.features(video), cond)


class VideoD(nn.Module):
    """Scores whole clips; with ``parts`` (motion only) it judges them against the template
    words alone, and the object is left to the image D, which sees it in every frame.

    ``view`` > 1: it sees each frame as view x view pixel averages (box-filtered, then
    blown back up, so the body is the same). Motion and colour survive; a digit's glyph does
    not. A real clip never shows a held-out pair, so a video D that can read the glyph learns
    "digit four never moves up" and G then draws another digit there (docs/quality.md,
    session 17); the glyph is left to the image D, which judges it in single frames.

    ``pool`` > 1: the body itself runs on pool x pool averages (DVD-GAN's temporal D, arXiv
    1907.06571, sees the clip 2x2 average-pooled; its spatial D alone sees full-resolution
    frames). Like ``view`` it hides fine detail, and its 3D convs run at 1/pool^2 the positions."""

    def __init__(self, cond_dim: int, ch: int = 32, size: int = 32, pool_first: bool = False, parts=None,
                 view: int = 1, pool: int = 1):
        super().__init__()
        self.parts = tuple(parts) if parts else None
        if view < 1 or size % view:
            raise ValueError(f"view must divide the size {size}, got {view}")
        if pool < 1 or size % pool or size // pool < 16:
            raise ValueError(f"pool must divide the size {size} and leave at least 16 pixels, got {pool}")
        self.view, self.pool = view, pool
        size //= pool
        if self.parts:
            cond_dim = self.parts[0]
        self.b3 = nn.Sequential(DBlock(3, ch, 3, first=True, pool_first=pool_first), DBlock(ch, 2 * ch, 3))  # T/4, H/4
        self.convgru = ConvGRU(2 * ch, 2 * ch, sn=True)
        n2 = int(math.log2(size // 16))  # 2D down-blocks to 4x4
        widths = [2 * ch] + [ch * 2 ** min(i + 2, 4) for i in range(n2 + 1)]
        self.b2 = nn.Sequential(*[DBlock(widths[i], widths[i + 1], 2, down=i < n2) for i in range(n2 + 1)])
        self.head = Projection(widths[-1], cond_dim)

    def features(self, video):
        if self.pool > 1:
            video = F.avg_pool3d(video, (1, self.pool, self.pool))
        if self.view > self.pool:  # view counts full-size pixels: view // pool of the pooled ones
            k = (1, self.view // self.pool, self.view // self.pool)
            video = F.interpolate(F.avg_pool3d(video, k), scale_factor=k, mode="nearest")
        h = self.b3(video)  # B,2ch,T/4,H/4,W/4
        h = self.convgru(h)[:, :, -1]  # last state: B,2ch,H/4,W/4
        return F.relu(self.b2(h)).sum((2, 3))

    def words(self, cond):
        """The part of a caption this D reads: all of it, or with ``parts`` the template's words."""
        return split_cond(cond, self.parts)[0]

    def score(self, phi, cond):
        return self.head(phi, self.words(cond))

    def forward(self, video, cond):
        return self.score(self.features(video), cond)


def fixed_noise(G: Generator, n: int, seed: int) -> torch.Tensor:
    """(n, T, Z) noise where sample j depends only on (seed, j): adding prompts, batching
    differently or rendering in training vs ``t2v sample`` never changes a clip."""
    return torch.stack([torch.randn(G.frames, G.z_dim, generator=torch.Generator().manual_seed(seed * 100_003 + j))
                        for j in range(n)])


@torch.no_grad()
def render(G: Generator, cond: torch.Tensor, n: int, seed: int, device="cpu", batch: int = 64) -> torch.Tensor:
    """(P, n, 3, T, H, W) in [-1, 1]: n fixed-noise samples of each of P conditions.
    The one rendering used by training's clip grids, evaluation and ``t2v sample``;
    it leaves the global RNG alone, so rendering mid-training can't change the run."""
    z = fixed_noise(G, n, seed).repeat(cond.shape[0], 1, 1)
    c = cond.repeat_interleave(n, 0)
    x = torch.cat([G(c[i:i + batch].to(device), z[i:i + batch].to(device)).cpu() for i in range(0, len(c), batch)])
    return x.view(cond.shape[0], n, *x.shape[1:])
