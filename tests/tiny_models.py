"""Tiny course models for tests: random weights, built in a fixed order so a seed fixes every number."""
import torch

from course_lib.diffusion.schedule import NoiseSchedule
from course_lib.diffusion.text2image import TextToImage, make_tokenizer
from course_lib.models.autoencoder import LatentAutoencoder
from course_lib.models.clip import TextEncoder
from course_lib.models.unet import UNet


def tiny_text_to_image(seed: int = 0, levels: int = 2, latent_scale: float = 1.7) -> TextToImage:
    """A TextToImage of width 16 (autoencoder with ``levels`` halvings, T = 100), in eval mode, with every
    weight nudged off its init so that the zero-initialised layers matter too."""
    torch.manual_seed(seed)
    tok = make_tokenizer()
    te = TextEncoder(tok.vocab_size, tok.context_length, dim=16, depth=1, num_heads=2, embed_dim=16)
    unet = UNet(4, base=16, mults=(1, 2), attn_levels=(1,), context_dim=16, num_heads=2)
    ae = LatentAutoencoder(3, 4, width=8, levels=levels)
    model = TextToImage(tok, te, unet, ae, NoiseSchedule.make("linear", 100), latent_scale=latent_scale)
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    return model.eval()
