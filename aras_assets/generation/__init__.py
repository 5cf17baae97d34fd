"""Synthetic generation: a style-based unconditional GAN, a mask-conditioned SPADE GAN with a
U-Net discriminator, sharded reproducible generation and FID."""
