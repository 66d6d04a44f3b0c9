"""The Photographic Artist's sampling side: a Qwen-Image-Edit-class flow-matching DiT conditioned on the critic.

Modules, each with one role:

- ``config``: the ``artist`` config section.
- ``model``: the artist directory layout, ``load_artist`` (tiny and real checkpoints alike) and the tiny build.
- ``codec``: photos ⇄ latents (the model's VAE, or the embedded lossless pixel-unshuffle codec).
- ``conditioning``: H_c padding and limits, latent packing, the flow-matching schedule, ``predict_velocity``
  (shared with the DiffusionNFT learner so both call the DiT identically).
- ``sampler``: the explicit deterministic ODE sampler loop (Euler, DPM-Solver++(2M)).
- ``actor`` / ``group``: ``ArtistSamplerActor`` (records in, versioned edits out) and its driver-side owner.

Nothing here imports ``critic_actor``, ``rewards`` or ``learner``; heavy libraries are imported inside functions.
"""
