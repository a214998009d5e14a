"""Look-alikes of NVIDIA's StyleGAN training outputs, written from scratch for tests.

``networks`` has small ``Generator`` / ``Discriminator`` modules with the interface of NVIDIA's
(``G(z, c)``, ``z_dim``, ``c_dim``, ``img_resolution``, a ``noise_mode`` keyword); ``snapshot`` pickles
them the way a ``network-snapshot-<kimg>.pkl`` is laid out (a dict with ``G``, ``D``, ``G_ema``, ...) and
writes ``metric-fid50k_full.jsonl`` lines; ``fake_trainer`` is a process that writes such a run over time.
"""
