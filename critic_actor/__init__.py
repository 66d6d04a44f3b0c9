"""The Image Critic: prompt and output grammar, model loading (real or tiny), rollout engines and actors.

Modules, one role each:

- ``grammar``: the instruction, chat messages, the tolerant parser and the renderer of the critic's output.
- ``model``: the tiny critic's recipe and offline builder; the one loader for tiny and real checkpoints.
- ``inputs``: image resolution and pixel-bounded resizing; the exact model inputs the learner rebuilds.
- ``engines``: vLLM and transformers generation behind one interface; in-place weight loading, collective
  receive, the served-output probe.
- ``weight_receiver``: what a replica does with a sync's tensors (full model, LoRA merged on the replica with the
  binding check, delta copy).
- ``vllm_weight_engine``: our gloo engine in vLLM's weight-transfer framework (imported only by vLLM's workers).
- ``actor``: ``CriticRolloutActor`` (records in, ``Critique`` records out; re-scoring; weight sync).
- ``group``: ``CriticRolloutGroup``, the driver-side owner of the replicas.

Importing the package is cheap: torch, transformers and vLLM are imported inside functions (the vLLM plugin
module is the one exception, and nothing outside vLLM's workers imports it at module level).
"""
