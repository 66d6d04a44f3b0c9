"""Rewards for both models, and the worker pool that computes them (ALGORITHMS.md §5).

Modules, one role each:

- ``images``      — what a scorable image is (uint8 ``[H, W, 3]``), clear errors for anything else; resizing.
- ``attributes``  — exposure / contrast / saturation / warmth in CIE Lab (fast path + colour-science reference).
- ``operators``   — rule-based tone edits per magnitude level; used for data synthesis and pseudo-edits.
- ``perceptual``  — LPIPS offline (real AlexNet weights when present, a loudly announced random trunk if not).
- ``artist``      — r_PA = r_comp · (λ1·r_photo + λ2·r_perc) with every component.
- ``critic``      — r_C = r_fmt · (w_fmt + w_rank·r_rank + w_sugg·r_sugg) with every component.
- ``worker``      — ``RewardWorker``: batched scoring with per-record error isolation (plain class).
- ``pool``        — ``RewardPool``: N Ray workers, results streamed in completion order.

Dependency rule: this package imports only ``rollout.records.types``, ``rollout.records.config_base`` and itself; heavy
libraries (torch, lpips, colour, OpenCV, Ray) are imported inside functions so the driver stays light.
"""
