"""StyleGAN2 (Karras et al. 2020) written from the paper: networks, losses, augmentation, module."""
