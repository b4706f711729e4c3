"""Every model family of the course, one readable file each (import the file you need).

====================  ========================================================  ===========
file                  what is inside                                            notebook
====================  ========================================================  ===========
``gpt``               a decoder-only transformer and decoding (top-k, top-p)    2 · 05
``vit``               patches, the vision transformer, attention rollout        2 · 06
``autoencoder``       conv/MLP autoencoders; latent diffusion's KL-autoencoder  2 · 08, 4 · 05
``vae``               the VAE, reparameterisation, the (beta-)ELBO              3 · 01
``gan``               DCGAN/MLP generators and critics, GAN losses, WGAN-GP     3 · 02
``advanced_gan``      conditional GAN, StyleGAN parts, pix2pix, CycleGAN        3 · 03
``flows``             RealNVP coupling, ActNorm, 1x1 convolutions, bits/dim     3 · 04
``clip``              text and image encoders, the contrastive loss             3 · 05
``captioning``        an image encoder + cross-attention decoder, VQA           3 · 06
``unet``              the diffusion U-Net (time, class and text conditioning)   4 · 02-07
``noisy_classifier``  a classifier of noisy images, for classifier guidance     4 · 06
====================  ========================================================  ===========

Models are built from the blocks in :mod:`course_lib.nn`; how a diffusion model is trained and
sampled lives in :mod:`course_lib.diffusion`.
"""
