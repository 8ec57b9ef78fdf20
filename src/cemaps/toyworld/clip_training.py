"""Training the toy CLIP: an open_clip ``CLIP`` trained contrastively on rendered (image, caption) pairs.

The CLIP loss with soft targets (identical captions occur in a batch, so each image's
target is spread over every matching caption). Command:
``cemaps toyworld train clip --out DIR``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cemaps.toyworld.architecture import toy_clip_config
from cemaps.toyworld.assets import TOY_CLIP_NAME
from cemaps.toyworld.train import STOP_FILE, render_pairs
from cemaps.toyworld.train_records import TrainingLog, lr_factor, plot_loss_curve, write_settings

# OpenAI CLIP's normalisation, which open_clip's transforms apply to the toy CLIP's inputs too.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipTraining:
    """Settings of :func:`train_toy_clip`."""

    seed: int = 1
    n_pairs: int = 12000
    minutes: float = 30.0
    batch: int = 128
    lr: float = 1e-3
    warmup_steps: int = 100


def train_toy_clip(
    out: str | Path, settings: ClipTraining = ClipTraining(), device: str | None = None, progress: bool = False
) -> Path:
    """Trains the toy CLIP contrastively; writes ``open_clip_model.safetensors`` and its open_clip config.

    ``progress``: a rich progress bar on stderr with the running loss (the loss is logged to CSV either way).
    """
    import open_clip

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / STOP_FILE).unlink(missing_ok=True)  # one left by an earlier run would end this one at step 0
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(settings.seed)
    log = TrainingLog(out / "train_log.csv", progress)
    write_settings(out, "clip", asdict(settings))
    config = toy_clip_config()
    (out / f"{TOY_CLIP_NAME}.json").write_text(json.dumps(config, indent=2) + "\n")
    images, captions = render_pairs(settings.n_pairs, settings.seed)
    tokenizer = open_clip.SimpleTokenizer(context_length=config["text_cfg"]["context_length"])
    tokens = tokenizer(captions)
    caption_ids = torch.from_numpy(np.unique(np.array(captions), return_inverse=True)[1].reshape(-1))
    pixels = (
        torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - torch.tensor(_CLIP_MEAN)[:, None, None]
    ) / torch.tensor(_CLIP_STD)[:, None, None]
    model = open_clip.CLIP(**config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.05)
    generator = torch.Generator().manual_seed(settings.seed + 2)
    started, step = time.perf_counter(), 0
    model.train()
    log.phase("clip", "toy CLIP", minutes=settings.minutes)
    while time.perf_counter() - started < 60 * settings.minutes and not (out / STOP_FILE).exists():
        index = torch.randint(len(images), (settings.batch,), generator=generator)
        image_features = model.encode_image(pixels[index].to(device), normalize=True)
        text_features = model.encode_text(tokens[index].to(device), normalize=True)
        logits = model.logit_scale.exp() * image_features @ text_features.T
        same = (caption_ids[index][:, None] == caption_ids[index][None, :]).float().to(device)
        targets = same / same.sum(dim=1, keepdim=True)
        loss = 0.5 * (
            torch.sum(-targets * F.log_softmax(logits, 1), 1).mean()
            + torch.sum(-targets * F.log_softmax(logits.T, 1), 1).mean()
        )
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * lr_factor(step, settings.warmup_steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        step += 1
        log.step_done(step, loss.item())
        if step % 500 == 0:
            _save_clip(model, out)
    log.end_phase(step)
    _save_clip(model, out)
    plot_loss_curve(out / "train_log.csv", out / "loss_curve.png")
    log.close()
    return out


def _save_clip(model, out: Path) -> None:
    from safetensors.torch import save_file

    state = {name: tensor.detach().to("cpu", torch.float16).contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
