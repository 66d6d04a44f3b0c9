"""The Image Critic: prompt and output grammar, model loading (real or tiny), rollout engines and actors.

Modules, one role each:

- ``grammar``: the instruction, chat messages, the tolerant parser and the renderer of the critic's output.
- ``model``: the tiny critic's recipe and offline builder; the one loader for tiny and real checkpoints.
- ``inputs``: image resolution and pixel-bounded resizing; the exact model inputs the learner rebuilds.
- ``engines``: vLLM and transformers generation behind one interface; in-place weight loading.
- ``actor``: ``CriticRolloutActor`` (records in, ``Critique`` records out; re-scoring; weight sync).
- ``group``: ``CriticRolloutGroup``, the driver-side owner of the replicas.

Importing the package is cheap: torch, transformers and vLLM are imported inside functions.
"""
