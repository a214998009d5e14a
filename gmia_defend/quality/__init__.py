"""Image quality: FID / Frechet distance that can share generated samples with the attack."""
