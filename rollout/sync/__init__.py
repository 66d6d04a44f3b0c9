"""Weight sync from learner ranks into serving replicas: the wire protocol both ends share (``weight_transport``)
and the driver-side owner of each model's sync (``weight_sync``).
"""
