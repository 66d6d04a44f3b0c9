"""Records that cross stage boundaries, the config base types every section builds on, and image handles.

Leaves of the import graph: the model and reward packages may import these and nothing else from ``rollout``.
"""
